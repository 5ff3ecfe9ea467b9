"""Detection metrics: greedy IoU matching per image and VOC all-point interpolated average precision."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from common.boxes import as_boxes, box_iou


@dataclass
class PrecisionRecall:
    ap: float
    precision: np.ndarray  # at each detection, by decreasing score
    recall: np.ndarray
    scores: np.ndarray
    num_ground_truth: int
    num_detections: int

    def at_threshold(self, score_threshold: float) -> tuple[float, float]:
        """(precision, recall) of the detections scoring at least ``score_threshold``: an operating point."""
        kept = int(np.count_nonzero(self.scores >= score_threshold))
        if kept == 0:
            return 1.0, 0.0
        return float(self.precision[kept - 1]), float(self.recall[kept - 1])


def matched_detections(pred_boxes, pred_scores, gt_boxes, gt_ignore=None, iou_threshold: float = 0.5
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Greedy VOC matching in score order → (index, is_true_positive) of the detections that count, ``index``
    into the given detections.

    A detection whose best face is an ``ignore`` face is dropped (neither true nor false positive);
    a face can be claimed once, later detections of it are false positives.
    """
    pred_boxes, gt_boxes = as_boxes(pred_boxes), as_boxes(gt_boxes)
    pred_scores = torch.as_tensor(pred_scores, dtype=torch.float32).reshape(-1)
    ignore = (torch.zeros(len(gt_boxes), dtype=torch.bool) if gt_ignore is None
              else torch.as_tensor(gt_ignore, dtype=torch.bool).reshape(-1))
    order = torch.argsort(pred_scores, descending=True)
    if len(gt_boxes) == 0:
        return order.numpy(), np.zeros(len(order), dtype=bool)
    iou = box_iou(pred_boxes[order], gt_boxes)  # (P, G)
    claimed = torch.zeros(len(gt_boxes), dtype=torch.bool)
    kept, true_positive = [], []
    for i in range(len(order)):
        best_iou, best = iou[i].max(0)
        if best_iou >= iou_threshold and ignore[best]:
            continue
        hit = bool(best_iou >= iou_threshold and not claimed[best])
        if hit:
            claimed[best] = True
        kept.append(int(order[i]))
        true_positive.append(hit)
    return np.asarray(kept, dtype=np.int64), np.asarray(true_positive, dtype=bool)


def match_image(pred_boxes, pred_scores, gt_boxes, gt_ignore=None, iou_threshold: float = 0.5):
    """``matched_detections`` → (scores, is_true_positive) of the detections that count, in score order."""
    index, true_positive = matched_detections(pred_boxes, pred_scores, gt_boxes, gt_ignore, iou_threshold)
    scores = torch.as_tensor(pred_scores, dtype=torch.float32).reshape(-1).numpy()
    return scores[index], true_positive


def matched_points(pred_boxes, pred_scores, gt_points) -> tuple[np.ndarray, np.ndarray]:
    """Like ``matched_detections`` for faces annotated by one point (a nose): in score order, a detection is a hit
    when its box contains a point not yet claimed (the one nearest the box centre). → (index, hits)."""
    pred_boxes = as_boxes(pred_boxes)
    pred_scores = torch.as_tensor(pred_scores, dtype=torch.float32).reshape(-1)
    points = torch.as_tensor(np.asarray(gt_points, dtype=np.float32)).reshape(-1, 2)
    order = torch.argsort(pred_scores, descending=True)
    claimed = torch.zeros(len(points), dtype=torch.bool)
    hits = np.zeros(len(order), dtype=bool)
    for i, (x1, y1, x2, y2) in enumerate(pred_boxes[order].tolist()):
        inside = ((points[:, 0] >= x1) & (points[:, 0] <= x2) & (points[:, 1] >= y1) & (points[:, 1] <= y2)
                  & ~claimed)
        if inside.any():
            centre = torch.tensor([(x1 + x2) / 2, (y1 + y2) / 2])
            distance = ((points - centre) ** 2).sum(1).masked_fill(~inside, float("inf"))
            claimed[int(distance.argmin())] = True
            hits[i] = True
    return order.numpy(), hits


def match_image_points(pred_boxes, pred_scores, gt_points):
    """``matched_points`` → (scores, hits) in score order."""
    index, hits = matched_points(pred_boxes, pred_scores, gt_points)
    return torch.as_tensor(pred_scores, dtype=torch.float32).reshape(-1).numpy()[index], hits


def size_bin(width: float, edges) -> str:
    """The label of the bin of ``edges`` (increasing) that ``width`` falls in: ``"a-b"``, or ``">=last"``."""
    for low, high in zip(edges, edges[1:]):
        if width < high:
            return f"{low}-{high}"
    return f">={edges[-1]}"


def size_bin_labels(edges) -> list[str]:
    return [f"{low}-{high}" for low, high in zip(edges, edges[1:])] + [f">={edges[-1]}"]


def voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """All-point interpolated AP (PASCAL VOC 2010+): area under the monotone precision envelope. Undefined
    precisions (NaN, as WIDER's evaluation can produce) are skipped by the envelope, as MATLAB's ``max``."""
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.fmax.accumulate(mpre[::-1])[::-1]
    steps = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def average_precision(images: list[dict], iou_threshold: float = 0.5) -> PrecisionRecall:
    """``images``: dicts with ``pred_boxes``, ``pred_scores`` and either ``gt_boxes`` (optional ``gt_ignore``,
    IoU matching) or ``gt_points`` (one point per face, point-in-box matching)."""
    all_scores, all_hits, num_gt = [], [], 0
    for item in images:
        if "gt_points" in item:
            scores, hits = match_image_points(item["pred_boxes"], item["pred_scores"], item["gt_points"])
            num_gt += len(item["gt_points"])
        else:
            ignore = item.get("gt_ignore")
            scores, hits = match_image(item["pred_boxes"], item["pred_scores"], item["gt_boxes"], ignore,
                                       iou_threshold)
            num_gt += len(item["gt_boxes"]) if ignore is None else int((~torch.as_tensor(ignore)).sum())
        all_scores.append(scores)
        all_hits.append(hits)
    scores = np.concatenate(all_scores) if all_scores else np.zeros(0, np.float32)
    hits = np.concatenate(all_hits) if all_hits else np.zeros(0, bool)
    order = np.argsort(-scores, kind="stable")
    scores, hits = scores[order], hits[order]
    tp = np.cumsum(hits)
    fp = np.cumsum(~hits)
    recall = tp / max(num_gt, 1)
    precision = tp / np.maximum(tp + fp, 1)
    ap = voc_ap(recall, precision) if num_gt else 0.0
    return PrecisionRecall(ap, precision, recall, scores, num_gt, len(scores))


def plot_precision_recall(curves: dict[str, PrecisionRecall], path, title: str = "precision-recall") -> None:
    """One PNG with a PR curve per named result, AP in the legend."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.5), dpi=120)
    for name, curve in curves.items():
        ax.plot(curve.recall, curve.precision, label=f"{name} (AP@0.5 = {curve.ap:.3f})")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1.01), ylim=(0, 1.01), title=title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_recall_by_size(rows_by_name: dict[str, list[dict]], path, title: str = "recall by face size") -> None:
    """One PNG of recall against face width: a line per name, from rows ``{"face_px": bin label, "recall"}``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5), dpi=120)
    labels = [row["face_px"] for row in next(iter(rows_by_name.values()))]
    for name, rows in rows_by_name.items():
        ax.plot([labels.index(row["face_px"]) for row in rows], [row["recall"] for row in rows], marker="o",
                label=name)
    ax.set_xticks(range(len(labels)), labels)
    ax.set(xlabel="face width (px)", ylabel="recall", ylim=(0, 1.02), title=title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
