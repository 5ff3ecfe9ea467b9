"""BlazeFace on whole photos: letterbox, batch, run, decode, map back to photo pixels."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from common.config import ConfigError
from common.boxes import weighted_nms
from common.checkpoint import model_state_from_file
from common.detections import Detections
from common.registry import build_model
from common.tiling import check_face_sizes, detect_on_passes, plan_passes
from detection.blazeface.mediapipe_import import load_mediapipe_weights
from detection.blazeface.model import BlazeFace, BlazeFaceFullRange, fuse_batchnorm
from detection.blazeface.postprocess import BlazeFacePostprocessor
from detection.blazeface.targets import BlazeFaceAnchors
from detection.data.dataset import letterbox



def normalize(images_uint8: torch.Tensor) -> torch.Tensor:
    """(B, 3, S, S) uint8 → float in [-1, 1], MediaPipe's input range."""
    return images_uint8.float() / 127.5 - 1.0


# The face widths (px at the network's input) each variant finds, measured with one LFW face (60 portraits of people
# of folds 1-9) pasted on a wall at each width: front (128-px input) finds 60 of 60 from 16 to 112 px, 56 at 14 px,
# 29 at 12 px; full (192-px input) 58-60 of 60 from 12 to 96 px (59 at 12, 58 at 96), 55 at 10 px, 56 at 112 px.
# "back" has no published weights: front's range scaled to its 256-px input, not measured.
FACE_PX = {"front": (16, 112), "full": (12, 96), "back": (32, 224)}


def load_weights(model: BlazeFace | BlazeFaceFullRange, weights: str | Path) -> BlazeFace | BlazeFaceFullRange:
    """MediaPipe ``.tflite`` or a ``.pth`` checkpoint/state_dict of ours."""
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"BlazeFace weights not found: {path}. Pass --weights with a MediaPipe "
                                "face_detection_short_range.tflite (or, for model.variant full, "
                                "face_detection_full_range_sparse.tflite) or a checkpoint written by train.py.")
    if path.suffix == ".tflite":
        return load_mediapipe_weights(model, path)
    model.load_state_dict(model_state_from_file(path))
    return model


class BlazeFaceDetector:
    """``face_px``: the (smallest, largest) face width in px it finds at its input (None: the variant's,
    ``FACE_PX``); ``min_face_px``: the smallest face to find in a photo (the tile planner's passes,
    ``common.tiling.plan_passes``), None: the whole photo once."""

    def __init__(self, model: BlazeFace | BlazeFaceFullRange, variant: str, device: str | torch.device = "cpu",
                 score_threshold: float = 0.5, nms_iou: float = 0.3, batch_size: int = 64,
                 min_face_px: float | None = None, face_px: Sequence[float] | None = None):
        self.anchors = BlazeFaceAnchors(variant)
        self.device = torch.device(device)
        # channels_last roughly doubles CPU throughput of the depthwise/pointwise convs (bench/bench_blazeface.py)
        self.model = fuse_batchnorm(model.eval()).to(self.device, memory_format=torch.channels_last).eval()
        self.postprocess = BlazeFacePostprocessor(self.anchors, score_threshold, nms_iou)
        self.batch_size = batch_size
        self.min_face_px, self.face_px = min_face_px, tuple(face_px or FACE_PX[variant])
        check_face_sizes(min_face_px, self.face_px)  # now, not at the first photo
        self.nms_iou = nms_iou

    def _run(self, crops: list[np.ndarray]) -> list[Detections]:
        """Each crop letterboxed to the input size; detections mapped back to crop pixels."""
        results = []
        size = self.anchors.input_size
        for start in range(0, len(crops), self.batch_size):
            chunk = [letterbox(crop, size) for crop in crops[start:start + self.batch_size]]
            batch = torch.from_numpy(np.stack([image for image, _ in chunk])).permute(0, 3, 1, 2)  # (B, 3, S, S)
            inputs = normalize(batch).to(self.device, memory_format=torch.channels_last)
            raw_regressors, raw_scores = self.model(inputs)
            for detections, (_, scale) in zip(self.postprocess(raw_regressors, raw_scores), chunk):
                results.append(detections.scaled(1 / scale, 1 / scale))
        return results

    @torch.inference_mode()
    def detect(self, images: Sequence[np.ndarray]) -> list[Detections]:
        """RGB uint8 (H, W, 3) photos → one ``Detections`` each, in photo pixels."""
        if self.min_face_px is None:
            return self._run(list(images))
        size = self.anchors.input_size
        return [detect_on_passes(image, plan_passes(*image.shape[:2], self.min_face_px, self.face_px, size),
                                 lambda crops, _: self._run(crops), self._merge) for image in images]

    def _merge(self, parts: list[Detections]) -> Detections:
        found = Detections.cat(parts)
        boxes, scores, landmarks = weighted_nms(found.boxes, found.scores, self.nms_iou, found.landmarks)
        return Detections(boxes, scores, landmarks)

    __call__ = detect


def blazeface_detector(weights: str | Path | None = None, variant: str = "front", device: str = "cpu",
                       score_threshold: float = 0.5, nms_iou: float = 0.3, batch_size: int = 64,
                       min_face_px: float | None = None, face_px: Sequence[float] | None = None
                       ) -> BlazeFaceDetector:
    if weights is None:
        raise ConfigError(f"BlazeFace {variant!r} needs weights: a MediaPipe .tflite (model.mediapipe_weights of "
                          "configs/detection_blazeface.yaml, see README) or a checkpoint from train.py --stage "
                          "detection")
    model = load_weights(build_model(f"blazeface_{variant}"), weights)
    return BlazeFaceDetector(model, variant, device, score_threshold, nms_iou, batch_size, min_face_px, face_px)
