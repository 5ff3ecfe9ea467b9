"""BlazeFace anchors, box coder and per-anchor training targets.

MediaPipe decodes with input-sized anchors and ``offset / input_size``: every regressed value is a pixel offset
on the network input. Matching, on the other hand, needs each anchor's true scale. Both anchor sets come from the
one generator in ``common.anchors``.
"""
from __future__ import annotations

import torch

from common.config import ConfigError
from common.anchors import BLAZEFACE_ANCHOR_OPTIONS, AnchorGenerator
from common.box_coder import BoxCoder
from common.boxes import cxcywh_to_xyxy
from common.matcher import anchor_labels, match_anchors

NUM_MEDIAPIPE_KEYPOINTS = 6  # image-left eye, image-right eye, nose tip, mouth centre, left ear, right ear
# The mouth corners sit this fraction of the eye-to-eye vector either side of the mouth centre (ArcFace's
# 112×112 template: corners 29.2 px apart for eyes 35.2 px apart, ratio 0.83 → 0.415 each side).
MOUTH_HALF_WIDTH_PER_EYE_DISTANCE = 0.415


def landmarks_to_mediapipe(landmarks: torch.Tensor) -> torch.Tensor:
    """(N, 5, 2) five-point landmarks → (N, 6, 2) MediaPipe keypoints; the ears are unknown (NaN)."""
    mouth = landmarks[:, 3:5].mean(dim=1, keepdim=True)
    ears = torch.full_like(landmarks[:, :2], float("nan"))
    return torch.cat([landmarks[:, :3], mouth, ears], dim=1)


def mediapipe_to_landmarks(keypoints: torch.Tensor) -> torch.Tensor:
    """(N, 6, 2) MediaPipe keypoints → (N, 5, 2): eyes and nose as given, mouth corners estimated."""
    eye_vector = keypoints[:, 1] - keypoints[:, 0]
    mouth = keypoints[:, 3]
    half = MOUTH_HALF_WIDTH_PER_EYE_DISTANCE * eye_vector
    return torch.stack([keypoints[:, 0], keypoints[:, 1], keypoints[:, 2], mouth - half, mouth + half], dim=1)


class BlazeFaceAnchors:
    """The 896 anchors of a variant: true-scale ``matching_xyxy`` and input-sized ``coder_cxcywh``."""

    def __init__(self, variant: str):
        if variant not in BLAZEFACE_ANCHOR_OPTIONS:
            raise ConfigError(f"unknown BlazeFace variant {variant!r}; choose from {sorted(BLAZEFACE_ANCHOR_OPTIONS)}")
        options = BLAZEFACE_ANCHOR_OPTIONS[variant]
        self.input_size = size = options["input_size"]
        self.matching_xyxy = cxcywh_to_xyxy(AnchorGenerator.mediapipe(**options)(size, size))  # (896, 4)
        self.coder_cxcywh = AnchorGenerator.mediapipe(**options, fixed_anchor_size=True)(size, size)  # (896, 4)
        self.coder = BoxCoder(center_variance=1.0 / size, size_variance=1.0 / size, size_mode="linear")


class BlazeFaceTargetBuilder:
    def __init__(self, anchors: BlazeFaceAnchors, positive_iou: float = 0.5, negative_iou: float = 0.35):
        self.anchors = anchors
        self.positive_iou, self.negative_iou = positive_iou, negative_iou

    def __call__(self, targets: list[dict]) -> dict[str, torch.Tensor]:
        """Per-anchor targets for a batch.

        ``labels`` (B, A): 1 face, 0 background, -1 ignored; ``box_offsets`` (B, A, 4);
        ``keypoint_offsets`` (B, A, 6, 2) and ``keypoint_valid`` (B, A, 6) where the keypoint is known.
        """
        anchors = self.anchors
        num_anchors = anchors.coder_cxcywh.shape[0]
        labels, box_offsets, point_offsets, point_valid = [], [], [], []
        for target in targets:
            boxes = target["boxes"]
            matched = match_anchors(anchors.matching_xyxy, boxes, self.positive_iou, self.negative_iou,
                                    target.get("ignore"))  # (A,)
            label = anchor_labels(matched)
            gt_index = matched.clamp(min=0)
            offsets = torch.zeros(num_anchors, 4)
            points = torch.zeros(num_anchors, NUM_MEDIAPIPE_KEYPOINTS, 2)
            valid = torch.zeros(num_anchors, NUM_MEDIAPIPE_KEYPOINTS, dtype=torch.bool)
            positive = matched >= 0
            if positive.any():
                gt_points = landmarks_to_mediapipe(target["landmarks"])[gt_index[positive]]  # (P, 6, 2)
                known = ~torch.isnan(gt_points).any(dim=2)  # (P, 6)
                offsets[positive] = anchors.coder.encode(boxes[gt_index[positive]], anchors.coder_cxcywh[positive])
                points[positive] = anchors.coder.encode_points(torch.nan_to_num(gt_points),
                                                               anchors.coder_cxcywh[positive])
                valid[positive] = known
            labels.append(label)
            box_offsets.append(offsets)
            point_offsets.append(points)
            point_valid.append(valid)
        return {"labels": torch.stack(labels), "box_offsets": torch.stack(box_offsets),
                "keypoint_offsets": torch.stack(point_offsets), "keypoint_valid": torch.stack(point_valid)}
