"""RetinaFace anchors, box coder and per-anchor training targets.

Anchors are squares of two sizes per level, centred on each cell: 16/32 px at stride 8, 64/128 at 16, 256/512
at 32 in Pytorch_Retinaface (``RETINAFACE_MIN_SIZES``, trained at 640 px), 10/20, 32/64, 128/256 in its
Face-Detector-1MB-with-landmark retraining (``SMALL_FACE_MIN_SIZES``, trained at 300 px). The two publish
``mobilenet0.25_Final.pth`` files of identical layout that differ in anchors and activations (``FLAVORS``);
the wrong flavour gives boxes 1.6 times too large or small. ../shared/models/retinaface/mobilenet0.25_Final.pth
is the 1MB one. Offsets use the SSD coder with variances 0.1 / 0.2, landmarks the same centre coder. Matching
follows the reference training: an anchor is a face when its IoU with one reaches 0.35, background below it,
and every face keeps at least one anchor of its own (``common.matcher``).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import torch

from common.config import ConfigError
from common.anchors import AnchorGenerator
from common.box_coder import BoxCoder
from common.boxes import cxcywh_to_xyxy
from common.detections import NUM_LANDMARKS
from common.matcher import anchor_labels, match_anchors

DEFAULT_STRIDES = (8, 16, 32)
RETINAFACE_MIN_SIZES = ((16, 32), (64, 128), (256, 512))
SMALL_FACE_MIN_SIZES = ((10, 20), (32, 64), (128, 256))


@dataclass(frozen=True)
class Flavor:
    """What a published set of weights was trained with: anchor sizes and the network's LeakyReLU slope."""

    min_sizes: tuple[tuple[int, int], ...]
    leaky_slope: float


FLAVORS = {"retinaface": Flavor(RETINAFACE_MIN_SIZES, 0.1), "1mb": Flavor(SMALL_FACE_MIN_SIZES, 0.0)}


def flavor_of(name: str) -> Flavor:
    if name not in FLAVORS:
        raise ConfigError(f"unknown RetinaFace flavor {name!r}; choose from {', '.join(FLAVORS)} (1mb: "
                         "Face-Detector-1MB-with-landmark weights, retinaface: Pytorch_Retinaface weights)")
    return FLAVORS[name]
CENTER_VARIANCE, SIZE_VARIANCE = 0.1, 0.2
INPUT_MULTIPLE = 32  # inputs are padded to a multiple of the coarsest stride so anchors sit exactly on cells


class RetinaFaceAnchors:
    """Anchors for any input size (a multiple of ``INPUT_MULTIPLE``), cached per size."""

    def __init__(self, min_sizes: Sequence[Sequence[float]] = RETINAFACE_MIN_SIZES,
                 strides: Sequence[int] = DEFAULT_STRIDES):
        self.generator = AnchorGenerator.from_min_sizes(strides, min_sizes)
        self.coder = BoxCoder(CENTER_VARIANCE, SIZE_VARIANCE, size_mode="log")
        self.min_sizes = tuple(tuple(level) for level in min_sizes)
        self._cxcywh = lru_cache(maxsize=8)(lambda height, width: self.generator(height, width))

    @classmethod
    def of_flavor(cls, name: str) -> "RetinaFaceAnchors":
        return cls(flavor_of(name).min_sizes)

    def cxcywh(self, height: int, width: int) -> torch.Tensor:
        """(A, 4) anchors for a (height, width) input."""
        if height % INPUT_MULTIPLE or width % INPUT_MULTIPLE:
            raise ValueError(f"RetinaFace inputs must be multiples of {INPUT_MULTIPLE} px, got {height}×{width}")
        return self._cxcywh(height, width)


class RetinaFaceTargetBuilder:
    def __init__(self, anchors: RetinaFaceAnchors, input_size: int, positive_iou: float = 0.35,
                 negative_iou: float = 0.35):
        self.anchors_cxcywh = anchors.cxcywh(input_size, input_size)
        self.anchors_xyxy = cxcywh_to_xyxy(self.anchors_cxcywh)
        self.coder = anchors.coder
        self.positive_iou, self.negative_iou = positive_iou, negative_iou

    def __call__(self, targets: list[dict]) -> dict[str, torch.Tensor]:
        """Per-anchor targets for a batch of ``input_size`` squares.

        ``labels`` (B, A): 1 face, 0 background, -1 ignored; ``boxes`` (B, A, 4) matched face boxes xyxy;
        ``box_offsets`` (B, A, 4); ``landmark_offsets`` (B, A, 5, 2) and ``landmark_valid`` (B, A) where the
        matched face has all five landmarks.
        """
        num_anchors = self.anchors_cxcywh.shape[0]
        out = {"labels": [], "boxes": [], "box_offsets": [], "landmark_offsets": [], "landmark_valid": []}
        for target in targets:
            boxes = target["boxes"]
            matched = match_anchors(self.anchors_xyxy, boxes, self.positive_iou, self.negative_iou,
                                    target.get("ignore"))  # (A,)
            label = anchor_labels(matched)
            positive = matched >= 0
            matched_boxes = torch.zeros(num_anchors, 4)
            offsets = torch.zeros(num_anchors, 4)
            points = torch.zeros(num_anchors, NUM_LANDMARKS, 2)
            valid = torch.zeros(num_anchors, dtype=torch.bool)
            if positive.any():
                face = matched[positive]
                anchors = self.anchors_cxcywh[positive]
                matched_boxes[positive] = boxes[face]
                offsets[positive] = self.coder.encode(boxes[face], anchors)
                gt_points = target["landmarks"][face]  # (P, 5, 2), NaN where absent
                valid[positive] = ~torch.isnan(gt_points).flatten(1).any(dim=1)
                points[positive] = self.coder.encode_points(torch.nan_to_num(gt_points), anchors)
            for key, value in zip(out, (label, matched_boxes, offsets, points, valid)):
                out[key].append(value)
        return {key: torch.stack(values) for key, values in out.items()}
