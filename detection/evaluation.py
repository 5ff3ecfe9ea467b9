"""``evaluate.py --benchmark detection``: run a detector over annotated photos and score AP@0.5."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from tqdm import tqdm

from common.boxes import as_boxes, box_iou
from common.io import read_image
from common.metrics import PrecisionRecall, average_precision, size_bin_labels
from detection.data.readers import read_annotations

DETECTION_SIZE_BINS = (0, 24, 32, 48, 64, 96)  # face-width bins (px) of the per-size figures: <24, 24-32, ..., >=96


def is_nose_point_file(path: Path) -> bool:
    """CompreFace-style ``annotations.json`` with ``nose_points_xy``: faces marked by one point each."""
    if path.suffix.lower() != ".json":
        return False
    try:
        return "nose_points_xy" in json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False


def load_benchmark(path: str | Path, data_root=None, fmt=None) -> list[dict]:
    """→ [{"image_path", and "gt_boxes"/"gt_ignore" or "gt_points"}]."""
    path = Path(path)
    if is_nose_point_file(path):
        points = json.loads(path.read_text(encoding="utf-8"))["nose_points_xy"]
        root = Path(data_root) if data_root else path.parent
        return [{"image_path": root / name, "gt_points": xy} for name, xy in sorted(points.items())]
    return [{"image_path": a.image_path, "gt_boxes": a.boxes, "gt_ignore": a.ignore}
            for a in read_annotations(path, data_root=data_root, fmt=fmt)]


def detect_items(detector, items: list[dict]) -> dict[str, list[dict]]:
    """Run ``detector`` over the benchmark items → source name → the items with ``pred_boxes`` and
    ``pred_scores``: ``"detector"`` alone, or for a fused detector (one with ``detect_each``) ``"fusion"`` and
    each member's own (calibrated) faces."""
    scored: dict[str, list[dict]] = {}
    for item in tqdm(items, desc="detecting", unit="image"):
        images = [read_image(item["image_path"])]
        if hasattr(detector, "detect_each"):
            members = detector.detect_each(images)
            found = {"fusion": detector.merge(members)[0], **{name: parts[0] for name, parts in members.items()}}
        else:
            found = {"detector": detector.detect(images)[0]}
        for name, detections in found.items():
            scored.setdefault(name, []).append({**item, "pred_boxes": detections.boxes,
                                                "pred_scores": detections.scores})
    return scored


def evaluate_detector(detector, items: list[dict], iou_threshold: float = 0.5) -> PrecisionRecall:
    """AP@``iou_threshold`` of ``detector`` (the fused faces of a fused one) over the benchmark items."""
    scored = detect_items(detector, items)
    return average_precision(scored.get("fusion", scored.get("detector")), iou_threshold)


def size_bin_curves(scored: list[dict], edges, iou_threshold: float = 0.5) -> dict[str, PrecisionRecall]:
    """One precision-recall curve per face-width bin (``edges``, increasing; the last bin is open), from
    ``scored`` items (``gt_boxes``, ``pred_boxes``, ``pred_scores``): a bin's faces are its ground-truth faces,
    the faces of other bins are ignored (a detection of one is neither right nor wrong), and a detection of no
    face counts against the bin its own width falls in."""
    curves = {}
    for low, high, label in zip(edges, [*edges[1:], float("inf")], size_bin_labels(edges)):
        items = []
        for item in scored:
            gt_boxes = as_boxes(item["gt_boxes"])
            widths = gt_boxes[:, 2] - gt_boxes[:, 0]
            ignore = ~((widths >= low) & (widths < high))
            if item.get("gt_ignore") is not None:
                ignore |= torch.as_tensor(item["gt_ignore"], dtype=torch.bool)
            pred_boxes = as_boxes(item["pred_boxes"])
            pred_widths = pred_boxes[:, 2] - pred_boxes[:, 0]
            of_a_face = ((box_iou(pred_boxes, gt_boxes) >= iou_threshold).any(1) if len(gt_boxes)
                         else torch.zeros(len(pred_boxes), dtype=torch.bool))
            keep = of_a_face | ((pred_widths >= low) & (pred_widths < high))
            items.append({"gt_boxes": gt_boxes, "gt_ignore": ignore, "pred_boxes": pred_boxes[keep],
                          "pred_scores": torch.as_tensor(item["pred_scores"]).reshape(-1)[keep]})
        curves[label] = average_precision(items, iou_threshold)
    return curves
