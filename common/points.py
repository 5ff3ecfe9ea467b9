"""Anchor-free face locations (YOLO, YuNet): the point grid, box and landmark decoding, and SimOTA assignment.

Every output location is a point of its level's grid: cell (column, row) of stride s sits at
((column + offset) · s, (row + offset) · s) input pixels; YOLOX-style heads put it at the cell centre (offset 0.5),
YuNet (mmdet's ``MlvlPointGenerator(offset=0)``) at the cell's corner. There are no anchor boxes. A box is decoded
as centre = point + (dx, dy) · stride and size = exp(dw, dh) · stride; a landmark as point + (dx, dy) · stride.

SimOTA (YOLOX, Ge et al. 2021) assigns, per image and per face, the ``k`` candidate locations of lowest cost,
where a candidate lies inside the face's box or within ``center_radius`` strides of its centre, the cost is
the classification cost (BCE of the location's face probability against 1) + ``iou_weight`` · (−log IoU of its
predicted box with the face) + a large penalty unless it is both inside the box and near the centre, and the
face's ``k`` is the sum of its ``candidate_topk`` best IoUs (at least 1). A location claimed by several faces
goes to the one it costs least.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import torch
import torch.nn.functional as F

from common.boxes import box_iou, nms
from common.detections import NUM_LANDMARKS, Detections

MAX_LOG_SIZE = 8.0  # exp(8) strides: larger raw sizes are clamped so an untrained head cannot overflow
IOU_EPS = 1e-8
PROBABILITY_EPS = 1e-6
OUTSIDE_COST = 1e5  # added to locations not both inside the box and near its centre
UNASSIGNED = -1


@lru_cache(maxsize=16)
def point_grid(height: int, width: int, strides: Sequence[int], offset: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Points (A, 2) in input pixels and their strides (A,), level by level, row-major within a level, for a
    (height, width) input that is a multiple of the coarsest stride."""
    multiple = max(strides)
    if height % multiple or width % multiple:
        raise ValueError(f"inputs must be multiples of {multiple} px, got {height}×{width}")
    points, point_strides = [], []
    for stride in strides:
        ys, xs = torch.meshgrid(torch.arange(height // stride), torch.arange(width // stride), indexing="ij")
        cells = torch.stack([xs, ys], dim=-1).reshape(-1, 2).float()  # (h·w, 2)
        points.append((cells + offset) * stride)
        point_strides.append(torch.full((len(cells),), float(stride)))
    return torch.cat(points), torch.cat(point_strides)


def decode_boxes(raw: torch.Tensor, points: torch.Tensor, strides: torch.Tensor) -> torch.Tensor:
    """(..., A, 4) raw box outputs → (..., A, 4) xyxy input pixels."""
    scale = strides[:, None]  # (A, 1)
    centres = points + raw[..., :2] * scale
    half_sizes = torch.exp(raw[..., 2:].clamp(max=MAX_LOG_SIZE)) * scale / 2
    return torch.cat([centres - half_sizes, centres + half_sizes], dim=-1)


def decode_landmarks(raw: torch.Tensor, points: torch.Tensor, strides: torch.Tensor) -> torch.Tensor:
    """(..., A, 10) raw landmark outputs → (..., A, 5, 2) input pixels."""
    offsets = raw.reshape(*raw.shape[:-1], NUM_LANDMARKS, 2)  # (..., A, 5, 2)
    return points[:, None, :] + offsets * strides[:, None, None]


def encode_landmarks(landmarks: torch.Tensor, points: torch.Tensor, strides: torch.Tensor) -> torch.Tensor:
    """(P, 5, 2) pixels at (P, 2) points of (P,) strides → (P, 10) raw targets (inverse of ``decode_landmarks``)."""
    return ((landmarks - points[:, None, :]) / strides[:, None, None]).flatten(1)


class SimOTAAssigner:
    def __init__(self, center_radius: float = 2.5, candidate_topk: int = 10, iou_weight: float = 3.0):
        self.center_radius, self.candidate_topk, self.iou_weight = center_radius, candidate_topk, iou_weight

    @torch.no_grad()
    def __call__(self, pred_boxes: torch.Tensor, face_probs: torch.Tensor, points: torch.Tensor,
                 strides: torch.Tensor, gt_boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One image: predicted boxes (A, 4) xyxy, face probabilities (A,), points (A, 2), strides (A,), faces
        (G, 4) → (assigned face index per location (A,), ``UNASSIGNED`` = background; IoU of each assigned
        location's box with its face (A,), 0 elsewhere)."""
        num_points = points.shape[0]
        assigned = torch.full((num_points,), UNASSIGNED, dtype=torch.long, device=points.device)
        matched_iou = torch.zeros(num_points, device=points.device)
        if len(gt_boxes) == 0:
            return assigned, matched_iou
        x, y = points[:, 0], points[:, 1]  # (A,)
        inside_box = ((x > gt_boxes[:, None, 0]) & (x < gt_boxes[:, None, 2]) &
                      (y > gt_boxes[:, None, 1]) & (y < gt_boxes[:, None, 3]))  # (G, A)
        centres = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2  # (G, 2)
        radius = self.center_radius * strides  # (A,)
        near_centre = ((points[None] - centres[:, None]).abs() < radius[None, :, None]).all(-1)  # (G, A)
        candidates = torch.nonzero((inside_box | near_centre).any(0)).squeeze(1)  # (C,)
        if len(candidates) == 0:
            return assigned, matched_iou
        ious = box_iou(gt_boxes, pred_boxes[candidates].float())  # (G, C)
        probs = face_probs[candidates].float().clamp(PROBABILITY_EPS, 1 - PROBABILITY_EPS)
        cls_cost = F.binary_cross_entropy(probs, torch.ones_like(probs), reduction="none")  # (C,)
        both = (inside_box & near_centre)[:, candidates]  # (G, C)
        cost = cls_cost[None] - self.iou_weight * torch.log(ious + IOU_EPS) + OUTSIDE_COST * (~both).float()
        topk = min(self.candidate_topk, len(candidates))
        dynamic_k = ious.topk(topk, dim=1).values.sum(1).int().clamp(min=1)  # (G,)
        rank = cost.argsort(dim=1).argsort(dim=1)  # (G, C): 0 = cheapest location for that face
        matching = rank < dynamic_k[:, None]
        # a location chosen by several faces goes to the face it costs least
        owner = cost.masked_fill(~matching, float("inf")).argmin(0)  # (C,)
        chosen = matching.any(0)
        assigned[candidates[chosen]] = owner[chosen]
        matched_iou[candidates[chosen]] = ious[owner[chosen], torch.nonzero(chosen).squeeze(1)]
        return assigned, matched_iou


@dataclass(frozen=True)
class BatchAssignment:
    """SimOTA over a batch. ``positive`` (B, A): locations assigned a face that is not ``ignore``; ``ignored``
    (B, A): locations assigned an ``ignore`` face (neither face nor background); ``ious`` (B, A): IoU of a
    positive's predicted box with its face, 0 elsewhere; ``boxes`` (P, 4) and ``landmarks`` (P, 5, 2, NaN where
    absent): the faces of the positives in ``positive``'s row-major order; ``points`` (P, 2) and ``strides`` (P,):
    the positives' locations."""

    positive: torch.Tensor
    ignored: torch.Tensor
    ious: torch.Tensor
    boxes: torch.Tensor
    landmarks: torch.Tensor
    points: torch.Tensor
    strides: torch.Tensor

    def encoded_landmarks(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(mask (P,) of positives whose face has all five points, their (L, 10) raw landmark targets)."""
        with_points = ~torch.isnan(self.landmarks).flatten(1).any(1)
        return with_points, encode_landmarks(self.landmarks[with_points], self.points[with_points],
                                             self.strides[with_points])


def assign_batch(assigner: SimOTAAssigner, pred_boxes: torch.Tensor, face_probs: torch.Tensor, points: torch.Tensor,
                 strides: torch.Tensor, targets: list[dict]) -> BatchAssignment:
    """Predicted boxes (B, A, 4) xyxy, face probabilities (B, A), points (A, 2), strides (A,) and per-image
    targets (``boxes`` (G, 4), ``landmarks`` (G, 5, 2) NaN where absent, ``ignore`` (G,)) → ``BatchAssignment``."""
    device = pred_boxes.device
    positives, ignores, ious, boxes, landmarks = [], [], [], [], []
    for index, target in enumerate(targets):
        gt_boxes = target["boxes"].to(device)
        assigned, matched_iou = assigner(pred_boxes[index].detach(), face_probs[index].detach(), points, strides,
                                         gt_boxes)
        hit = assigned >= 0
        ignored = torch.zeros_like(hit)
        ignored[hit] = target["ignore"].to(device)[assigned[hit]]
        positive = hit & ~ignored
        positives.append(positive)
        ignores.append(ignored)
        ious.append(matched_iou * positive)
        boxes.append(gt_boxes[assigned[positive]])
        landmarks.append(target["landmarks"].to(device)[assigned[positive]])
    positive = torch.stack(positives)  # (B, A)
    batch_points = points.expand(len(targets), -1, -1)[positive]  # (P, 2)
    return BatchAssignment(positive, torch.stack(ignores), torch.stack(ious), torch.cat(boxes), torch.cat(landmarks),
                           batch_points, strides.expand(len(targets), -1)[positive])


def point_detections(box_raw: torch.Tensor, scores: torch.Tensor, landmark_raw: torch.Tensor, points: torch.Tensor,
                     strides: torch.Tensor, score_threshold: float, nms_iou: float, pre_nms_top_k: int,
                     keep_top_k: int) -> list[Detections]:
    """Raw box (B, A, 4) and landmark (B, A, 10) outputs with face scores (B, A) at points (A, 2) of strides (A,)
    → one ``Detections`` per image, in input pixels, by decreasing score: those over ``score_threshold``, the
    ``pre_nms_top_k`` best decoded, NMS at ``nms_iou``, at most ``keep_top_k`` kept."""
    results = []
    for image_raw, image_scores, image_points in zip(box_raw.float(), scores, landmark_raw.float()):
        keep = torch.nonzero(image_scores > score_threshold).squeeze(1)
        keep = keep[image_scores[keep].argsort(descending=True)[:pre_nms_top_k]]
        boxes = decode_boxes(image_raw[keep], points[keep], strides[keep])  # (K, 4)
        landmarks = decode_landmarks(image_points[keep], points[keep], strides[keep])  # (K, 5, 2)
        kept = nms(boxes, image_scores[keep], nms_iou)[:keep_top_k]
        results.append(Detections(boxes[kept].cpu(), image_scores[keep][kept].cpu(), landmarks[kept].cpu()))
    return results
