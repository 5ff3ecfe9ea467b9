"""IoU matching of anchors to ground-truth faces.

Thresholds alone leave a face unmatched when no anchor reaches ``positive_iou`` (small faces), and the usual
"each face takes its best anchor" fix fails when two faces share that best anchor (two faces in one grid cell:
the later face silently wins). Here the forced matches are an optimal one-to-one assignment
(``scipy.optimize.linear_sum_assignment`` on IoU), so every face gets an anchor of its own whenever one exists.
"""
from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment

from common.boxes import box_iou

BACKGROUND = -1
IGNORE = -2


def match_anchors(anchors_xyxy: torch.Tensor, gt_boxes: torch.Tensor, positive_iou: float = 0.5,
                  negative_iou: float = 0.35, gt_ignore: torch.Tensor | None = None) -> torch.Tensor:
    """(A,) long: the index of the face each anchor regresses to, ``BACKGROUND``, or ``IGNORE``.

    Anchors with IoU ≥ ``positive_iou`` take their best face, those below ``negative_iou`` are background,
    those in between are ignored in the loss; every face then gets at least one anchor of its own.
    Faces flagged in ``gt_ignore`` never become positives; anchors overlapping them are ignored.
    """
    num_anchors = anchors_xyxy.shape[0]
    matched = torch.full((num_anchors,), BACKGROUND, dtype=torch.long, device=anchors_xyxy.device)
    if gt_boxes.shape[0] == 0:
        return matched
    if gt_ignore is None:
        gt_ignore = torch.zeros(gt_boxes.shape[0], dtype=torch.bool, device=gt_boxes.device)
    iou = box_iou(gt_boxes, anchors_xyxy)  # (G, A)
    best_iou, best_gt = iou.max(dim=0)  # (A,)
    matched[best_iou >= positive_iou] = best_gt[best_iou >= positive_iou]
    matched[(best_iou >= negative_iou) & (best_iou < positive_iou)] = IGNORE
    matched[(best_iou >= negative_iou) & gt_ignore[best_gt]] = IGNORE

    counted = torch.nonzero(~gt_ignore).squeeze(1)
    if counted.numel():
        # An optimal assignment only ever uses each face's top-G anchors, so restrict the columns to those.
        k = min(num_anchors, counted.numel())
        candidates = torch.unique(iou[counted].topk(k, dim=1).indices)
        cost = iou[counted][:, candidates].cpu().numpy()
        rows, cols = linear_sum_assignment(cost, maximize=True)
        for row, col in zip(rows, cols):
            if cost[row, col] > 0:
                matched[candidates[col]] = counted[row]
    return matched


def anchor_labels(matched: torch.Tensor) -> torch.Tensor:
    """(A,) long classification targets from ``match_anchors``: 1 face, 0 background, -1 ignored."""
    labels = (matched >= 0).long()
    labels[matched == IGNORE] = -1
    return labels
