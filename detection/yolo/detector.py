"""The YOLO face network on whole photos: resize, pad to a multiple of 32, run, decode, map back to photo pixels."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from common.errors import InputError
from common.config import ConfigError
from common.checkpoint import model_state_from_file, state_mismatch
from common.detections import Detections
from common.registry import build_model
from common.tiling import pad_to_multiple, resize_by
from detection.yolo.model import YoloFace
from detection.yolo.postprocess import YoloPostprocessor
from detection.yolo.targets import INPUT_MULTIPLE

PIXEL_SCALE = 255.0


def preprocess(images_uint8: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB uint8 → (B, 3, H, W) float in [0, 1]."""
    return images_uint8.float() / PIXEL_SCALE


def load_weights(model: YoloFace, weights: str | Path) -> YoloFace:
    """A checkpoint of ``train.py --detector yolo`` (or a bare state dict) of the same width/depth."""
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"YOLO weights not found: {path}. Train them with python train.py --stage detection "
                                "--detector yolo (see configs/detection_yolo.yaml) or pass --weights.")
    state = model_state_from_file(path)
    mismatch = state_mismatch(model.state_dict(), state)
    if mismatch:
        raise InputError(f"{path} does not fit YoloFace(width={model.width}, depth={model.depth}): {mismatch}; "
                         "set model.width / model.depth to those it was trained with")
    model.load_state_dict(state)
    return model


class YoloDetector:
    """``long_side``: resize the photo so its longer side is this many pixels (None: original size)."""

    def __init__(self, model: YoloFace, device: str | torch.device = "cpu", score_threshold: float = 0.5,
                 nms_iou: float = 0.45, long_side: int | None = 640):
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self.postprocess = YoloPostprocessor(score_threshold, nms_iou)
        self.long_side = long_side

    @torch.inference_mode()
    def detect(self, images: Sequence[np.ndarray]) -> list[Detections]:
        """RGB uint8 (H, W, 3) photos → one ``Detections`` each, in photo pixels, by decreasing score."""
        results = []
        for image in images:
            height, width = image.shape[:2]
            resized = resize_by(image, self.long_side / max(height, width) if self.long_side else 1.0)
            batch = torch.from_numpy(np.ascontiguousarray(resized)).permute(2, 0, 1)[None].to(self.device)
            # black padding, as the training letterbox pads
            inputs = pad_to_multiple(preprocess(batch), INPUT_MULTIPLE)  # (1, 3, h', w')
            found = self.postprocess(*self.model(inputs), *inputs.shape[-2:])[0]
            results.append(found.scaled(width / resized.shape[1], height / resized.shape[0]))
        return results

    __call__ = detect


def yolo_detector(weights: str | Path | None = None, width: float = 0.25, depth: float = 0.33, device: str = "cpu",
                  score_threshold: float = 0.5, nms_iou: float = 0.45, long_side: int | None = 640) -> YoloDetector:
    if weights is None:
        raise ConfigError("the YOLO face detector needs weights: train them with python train.py --stage detection "
                         "--detector yolo, then set model.weights or pass --weights")
    model = load_weights(build_model("yolo_face", width=width, depth=depth), weights)
    return YoloDetector(model, device, score_threshold, nms_iou, long_side)
