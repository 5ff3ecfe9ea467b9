"""BlazeFace on whole photos: letterbox, batch, run, decode, map back to photo pixels."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from common.checkpoint import model_state_from_file
from common.detections import Detections
from common.registry import build_model, register_detector
from detection.blazeface.model import BlazeFace, fuse_batchnorm
from detection.blazeface.postprocess import BlazeFacePostprocessor
from detection.blazeface.targets import BlazeFaceAnchors
from detection.data.dataset import letterbox


def normalize(images_uint8: torch.Tensor) -> torch.Tensor:
    """(B, 3, S, S) uint8 → float in [-1, 1], MediaPipe's input range."""
    return images_uint8.float() / 127.5 - 1.0


def load_weights(model: BlazeFace, weights: str | Path) -> BlazeFace:
    """MediaPipe ``.tflite`` or a ``.pth`` checkpoint/state_dict of ours."""
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"BlazeFace weights not found: {path}. Pass --weights with a MediaPipe "
                                "face_detection_short_range.tflite or a checkpoint written by train.py.")
    if path.suffix == ".tflite":
        from detection.blazeface.mediapipe_import import load_mediapipe_weights
        return load_mediapipe_weights(model, path)
    model.load_state_dict(model_state_from_file(path))
    return model


class BlazeFaceDetector:
    def __init__(self, model: BlazeFace, variant: str, device: str | torch.device = "cpu",
                 score_threshold: float = 0.5, nms_iou: float = 0.3, batch_size: int = 64):
        self.anchors = BlazeFaceAnchors(variant)
        self.device = torch.device(device)
        self.model = fuse_batchnorm(model.eval()).to(self.device).eval()
        self.postprocess = BlazeFacePostprocessor(self.anchors, score_threshold, nms_iou)
        self.batch_size = batch_size

    @torch.inference_mode()
    def detect(self, images: Sequence[np.ndarray]) -> list[Detections]:
        """RGB uint8 (H, W, 3) photos → one ``Detections`` each, in photo pixels."""
        results = []
        size = self.anchors.input_size
        for start in range(0, len(images), self.batch_size):
            chunk = [letterbox(image, size) for image in images[start:start + self.batch_size]]
            batch = torch.from_numpy(np.stack([image for image, _ in chunk])).permute(0, 3, 1, 2)  # (B, 3, S, S)
            raw_regressors, raw_scores = self.model(normalize(batch).to(self.device))
            for detections, (_, scale) in zip(self.postprocess(raw_regressors, raw_scores), chunk):
                results.append(detections.scaled(1 / scale, 1 / scale))
        return results

    __call__ = detect


@register_detector("blazeface")
def blazeface_detector(weights: str | Path | None = None, variant: str = "front", device: str = "cpu",
                       score_threshold: float = 0.5, nms_iou: float = 0.3, batch_size: int = 64) -> BlazeFaceDetector:
    if weights is None:
        raise ValueError("BlazeFace needs weights: a MediaPipe face_detection_short_range.tflite (see README) "
                         "or a checkpoint from train.py --stage detection")
    model = load_weights(build_model(f"blazeface_{variant}"), weights)
    return BlazeFaceDetector(model, variant, device, score_threshold, nms_iou, batch_size)
