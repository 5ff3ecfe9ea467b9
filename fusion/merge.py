"""Merge ``Detections`` from several sources into one.

Every method takes a list of ``Detections`` (one per source: a detector, or a tile) and returns one
``Detections`` plus the number of distinct sources that agree on each fused face ("votes"):

- ``nms``: keep the best box of each overlapping group (``torchvision.ops.nms``);
- ``soft_nms``: decay the scores of overlapping boxes instead of removing them (Bodla et al. 2017), linear or
  Gaussian;
- ``wbf``: weighted box fusion (Solovyev et al. 2019): cluster boxes by IoU with the running fused box, average
  each cluster's boxes and landmarks weighted by source weight × score, and score it by the weighted mean of
  each source's best score over the sources that can see a face of its size, so a face only one of three
  competent detectors saw scores lower, but a detector that cannot find faces that small (or large) abstains.

``competent`` (optional, per source) says which face widths a source can find (``ScoreCalibrator.competent``);
without it every source counts everywhere.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from common.config import ConfigError
from common.boxes import box_iou, nms
from common.detections import Detections

METHODS = ("nms", "soft_nms", "wbf")


@dataclass
class FusionSettings:
    """``method``: nms | soft_nms | wbf. ``iou``: overlap that makes two boxes the same face. ``weights``: per
    source (default 1 each). ``landmark_weights``: per source, its share in a fused face's landmarks (wbf; default
    ``weights``; 0: its landmarks count only where no other source saw the face). ``min_votes``: distinct sources
    that must agree. ``soft_nms_method``: linear | gaussian, ``soft_nms_sigma`` for gaussian. ``score_threshold``:
    fused faces scoring less are dropped. ``competent_recall``: wbf with per-source competence (``fuse``'s
    ``competent``): a source counts in a face's score where its recall at that face width reaches this."""

    method: str = "wbf"
    iou: float = 0.5
    weights: Sequence[float] | None = None
    landmark_weights: Sequence[float] | None = None
    min_votes: int = 1
    soft_nms_method: str = "gaussian"
    soft_nms_sigma: float = 0.5
    score_threshold: float = 0.0
    competent_recall: float = 0.5

    def __post_init__(self):
        if self.method not in METHODS:
            raise ConfigError(f"fusion method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.soft_nms_method not in ("linear", "gaussian"):
            raise ConfigError(f"soft_nms_method must be linear or gaussian, got {self.soft_nms_method!r}")
        if not 0 < self.iou <= 1 or self.min_votes < 1:
            raise ConfigError(f"need 0 < iou <= 1 and min_votes >= 1, got iou={self.iou}, min_votes={self.min_votes}")
        if not 0 <= self.competent_recall <= 1:
            raise ConfigError(f"competent_recall must lie in [0, 1], got {self.competent_recall}")


def _stack(parts: Sequence[Detections]) -> tuple[Detections, torch.Tensor]:
    """All faces in one ``Detections`` and the index of the source of each."""
    sources = torch.cat([torch.full((len(part),), index, dtype=torch.int64) for index, part in enumerate(parts)])
    return Detections.cat([part.to("cpu") for part in parts]), sources


def _votes(kept_boxes: torch.Tensor, boxes: torch.Tensor, sources: torch.Tensor, iou: float) -> torch.Tensor:
    """Distinct sources with a box overlapping each kept box by at least ``iou``."""
    if not len(kept_boxes):
        return torch.zeros(0, dtype=torch.int64)
    overlapping = box_iou(kept_boxes, boxes) >= iou  # (K, N)
    per_source = torch.zeros(len(kept_boxes), int(sources.max()) + 1, dtype=torch.bool)
    per_source.scatter_reduce_(1, sources.expand(len(kept_boxes), -1), overlapping, reduce="amax")
    return per_source.sum(1)


def _nms(faces: Detections, sources: torch.Tensor, settings: FusionSettings) -> tuple[Detections, torch.Tensor]:
    keep = nms(faces.boxes, faces.scores, settings.iou)
    return faces[keep], _votes(faces.boxes[keep], faces.boxes, sources, settings.iou)


def soft_nms_scores(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, method: str = "gaussian",
                    sigma: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """(order, decayed scores): boxes picked best-first, each pick decaying the scores of the boxes left by
    ``exp(-iou² / sigma)`` (gaussian) or ``1 - iou`` where iou > ``iou_threshold`` (linear)."""
    scores = scores.float().clone()
    ious = box_iou(boxes, boxes)  # (N, N)
    remaining = torch.ones(len(boxes), dtype=torch.bool)
    order, final = [], []
    for _ in range(len(boxes)):
        best = int(torch.where(remaining, scores, torch.tensor(-1.0)).argmax())
        order.append(best)
        final.append(scores[best])
        remaining[best] = False
        overlap = ious[best]
        if method == "gaussian":
            decay = torch.exp(-(overlap ** 2) / sigma)
        else:
            decay = torch.where(overlap > iou_threshold, 1 - overlap, torch.ones_like(overlap))
        scores = torch.where(remaining, scores * decay, scores)
    return torch.tensor(order, dtype=torch.int64), torch.stack(final) if final else scores[:0]


def _soft_nms(faces: Detections, sources: torch.Tensor, settings: FusionSettings) -> tuple[Detections, torch.Tensor]:
    order, decayed = soft_nms_scores(faces.boxes, faces.scores, settings.iou, settings.soft_nms_method,
                                     settings.soft_nms_sigma)
    kept = faces[order]
    kept.scores = decayed
    return kept, _votes(kept.boxes, faces.boxes, sources, settings.iou)


def _wbf(faces: Detections, sources: torch.Tensor, settings: FusionSettings, num_sources: int,
         competent: Sequence[Callable[[torch.Tensor], torch.Tensor] | None] | None = None
         ) -> tuple[Detections, torch.Tensor]:
    weights = (torch.ones(num_sources) if settings.weights is None
               else torch.tensor(settings.weights, dtype=torch.float32))
    landmark_weights = (weights if settings.landmark_weights is None
                        else torch.tensor(settings.landmark_weights, dtype=torch.float32))
    order = torch.argsort(faces.scores, descending=True)
    members: list[list[int]] = []
    fused_boxes = torch.zeros(0, 4)
    for index in order.tolist():
        if members:
            iou = box_iou(faces.boxes[index:index + 1], fused_boxes)[0]
            best = int(iou.argmax())
            if iou[best] >= settings.iou:
                members[best].append(index)
                cluster = torch.tensor(members[best])
                mass = weights[sources[cluster]] * faces.scores[cluster]
                fused_boxes[best] = (faces.boxes[cluster] * mass[:, None]).sum(0) / mass.sum()
                continue
        members.append([index])
        fused_boxes = torch.cat([fused_boxes, faces.boxes[index:index + 1]])
    if not members:
        return Detections.empty(), torch.zeros(0, dtype=torch.int64)
    boxes, landmarks, best_per_source, reported = [], [], [], torch.zeros(len(members), num_sources, dtype=torch.bool)
    for face, cluster in enumerate(members):
        cluster = torch.tensor(cluster)
        mass = weights[sources[cluster]] * faces.scores[cluster]
        mass = mass / mass.sum() if mass.sum() > 0 else torch.full_like(mass, 1 / len(mass))
        boxes.append((faces.boxes[cluster] * mass[:, None]).sum(0))
        landmark_mass = landmark_weights[sources[cluster]] * faces.scores[cluster]
        landmark_mass = mass if landmark_mass.sum() <= 0 else landmark_mass / landmark_mass.sum()
        landmarks.append((faces.landmarks[cluster] * landmark_mass[:, None, None]).sum(0))
        best_per_source.append(torch.zeros(num_sources).scatter_reduce(0, sources[cluster], faces.scores[cluster],
                                                                       "amax"))
        reported[face, sources[cluster]] = True
    boxes, best = torch.stack(boxes), torch.stack(best_per_source)  # (K, 4), (K, S)
    widths = boxes[:, 2] - boxes[:, 0]
    can_see = torch.ones_like(reported) if competent is None else torch.stack(
        [torch.ones(len(boxes), dtype=torch.bool) if source is None else source(widths) for source in competent], 1)
    counted = (can_see | reported).float()  # (K, S): a source that reported a face always counts
    scores = (weights * best * counted).sum(1) / (weights * counted).sum(1)
    votes = reported.sum(1)
    fused = Detections(boxes, scores, torch.stack(landmarks))
    order = torch.argsort(fused.scores, descending=True)
    return fused[order], votes[order]


def fuse(parts: Sequence[Detections], settings: FusionSettings,
         competent: Sequence[Callable[[torch.Tensor], torch.Tensor] | None] | None = None
         ) -> tuple[Detections, torch.Tensor]:
    """One ``Detections`` (by decreasing score) and the votes of each face, from one ``Detections`` per source;
    ``competent``: per source, (N,) face widths → (N,) whether it can find faces that wide (None: everywhere)."""
    for name, values in (("weights", settings.weights), ("landmark weights", settings.landmark_weights)):
        if values is not None and len(values) != len(parts):
            raise ConfigError(f"{len(values)} fusion {name} for {len(parts)} sources")
    faces, sources = _stack(parts) if parts else (Detections.empty(), torch.zeros(0, dtype=torch.int64))
    if not len(faces):
        return faces, torch.zeros(0, dtype=torch.int64)
    if settings.method == "nms":
        fused, votes = _nms(faces, sources, settings)
    elif settings.method == "soft_nms":
        fused, votes = _soft_nms(faces, sources, settings)
    else:
        fused, votes = _wbf(faces, sources, settings, len(parts), competent)
    keep = (votes >= settings.min_votes) & (fused.scores >= settings.score_threshold)
    return fused[keep], votes[keep]
