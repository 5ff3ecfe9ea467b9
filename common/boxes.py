"""Boxes are float32 ``xyxy`` pixel tensors everywhere; converters exist only for the edges.

IoU, NMS and batched NMS wrap ``torchvision.ops``; weighted NMS is MediaPipe's blending suppression.
"""
from __future__ import annotations

import numpy as np
import torch
from torchvision.ops import batched_nms as _tv_batched_nms
from torchvision.ops import box_convert, box_iou as _tv_box_iou, clip_boxes_to_image, nms as _tv_nms


def as_boxes(boxes) -> torch.Tensor:
    """Any (N, 4) array-like → float32 tensor; an empty input becomes shape (0, 4)."""
    tensor = torch.as_tensor(np.asarray(boxes, dtype=np.float32) if not torch.is_tensor(boxes) else boxes)
    tensor = tensor.to(torch.float32)
    if tensor.numel() == 0:
        return tensor.reshape(0, 4)
    if tensor.ndim != 2 or tensor.shape[-1] != 4:
        raise ValueError(f"boxes must have shape (N, 4), got {tuple(tensor.shape)}")
    return tensor


def xywh_to_xyxy(boxes) -> torch.Tensor:
    return box_convert(as_boxes(boxes), "xywh", "xyxy")


def xyxy_to_xywh(boxes) -> torch.Tensor:
    return box_convert(as_boxes(boxes), "xyxy", "xywh")


def cxcywh_to_xyxy(boxes) -> torch.Tensor:
    return box_convert(as_boxes(boxes), "cxcywh", "xyxy")


def xyxy_to_cxcywh(boxes) -> torch.Tensor:
    return box_convert(as_boxes(boxes), "xyxy", "cxcywh")


def normalized_yxyx_to_xyxy(boxes, image_width: float, image_height: float) -> torch.Tensor:
    """MediaPipe's relative ``ymin, xmin, ymax, xmax`` → pixel ``xyxy``."""
    yxyx = as_boxes(boxes)
    scale = torch.tensor([image_width, image_height, image_width, image_height], dtype=torch.float32)
    return yxyx[:, [1, 0, 3, 2]] * scale


def box_iou(boxes_a: torch.Tensor, boxes_b: torch.Tensor) -> torch.Tensor:
    """(N, 4) × (M, 4) → (N, M) IoU."""
    return _tv_box_iou(as_boxes(boxes_a), as_boxes(boxes_b))


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    boxes = as_boxes(boxes)
    return (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)


def clip_boxes(boxes: torch.Tensor, image_height: int, image_width: int) -> torch.Tensor:
    return clip_boxes_to_image(as_boxes(boxes), (int(image_height), int(image_width)))


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Indices kept, by decreasing score."""
    return _tv_nms(as_boxes(boxes), scores.float(), float(iou_threshold))


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """NMS run independently within each group id (image index, class, source detector)."""
    return _tv_batched_nms(as_boxes(boxes), scores.float(), groups, float(iou_threshold))


def weighted_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float,
                 points: torch.Tensor | None = None):
    """MediaPipe's blending suppression.

    Take the best remaining box, gather every remaining box overlapping it by more than ``iou_threshold``,
    and replace the cluster by the score-weighted mean of its boxes (and points); the cluster keeps the best
    score. Returns ``(boxes (K, 4), scores (K,), points (K, P, 2) or None)`` ordered by decreasing score.
    """
    boxes = as_boxes(boxes)
    order = torch.argsort(scores, descending=True)
    boxes, scores = boxes[order], scores[order].float()
    points = points[order] if points is not None else None
    remaining = torch.ones(len(boxes), dtype=torch.bool)
    ious = box_iou(boxes, boxes)  # (N, N)
    kept_boxes, kept_scores, kept_points = [], [], []
    for best in range(len(boxes)):
        if not remaining[best]:
            continue
        cluster = remaining & (ious[best] > iou_threshold)
        cluster[best] = True
        weights = scores[cluster] / scores[cluster].sum()
        kept_boxes.append((boxes[cluster] * weights[:, None]).sum(0))
        kept_scores.append(scores[best])
        if points is not None:
            kept_points.append((points[cluster] * weights[:, None, None]).sum(0))
        remaining &= ~cluster
    if not kept_boxes:
        empty_points = points[:0] if points is not None else None
        return boxes[:0], scores[:0], empty_points
    stacked_points = torch.stack(kept_points) if points is not None else None
    return torch.stack(kept_boxes), torch.stack(kept_scores), stacked_points
