"""The YOLO face network on whole photos (``detection.photo_detector``): its weights, pixels and decoding."""
from __future__ import annotations

from pathlib import Path

import torch

from common.config import ConfigError
from common.checkpoint import load_network_weights
from common.registry import build_model
from detection.photo_detector import ConvolutionalPhotoDetector
from detection.yolo.model import YoloFace
from detection.yolo.postprocess import YoloPostprocessor
from detection.yolo.targets import INPUT_MULTIPLE

PIXEL_SCALE = 255.0


def preprocess(images_uint8: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB uint8 → (B, 3, H, W) float in [0, 1]."""
    return images_uint8.float() / PIXEL_SCALE


def load_weights(model: YoloFace, weights: str | Path) -> YoloFace:
    """A checkpoint of ``train.py --detector yolo`` (or a bare state dict) of the same width/depth."""
    return load_network_weights(model, weights, "YOLO", "Train them with python train.py --stage detection "
                                "--detector yolo (see configs/detection_yolo.yaml) or pass --weights.",
                                f"YoloFace(width={model.width}, depth={model.depth})",
                                "set model.width / model.depth to those it was trained with")


def yolo_detector(weights: str | Path | None = None, width: float = 0.25, depth: float = 0.33, device: str = "cpu",
                  score_threshold: float = 0.5, nms_iou: float = 0.45, long_side: int | None = 640
                  ) -> ConvolutionalPhotoDetector:
    """The photo detector (``ConvolutionalPhotoDetector`` documents the arguments): the photo resized once so its
    longer side is ``long_side`` px (None: original size), padded black as the training letterbox pads."""
    if weights is None:
        raise ConfigError("the YOLO face detector needs weights: train them with python train.py --stage detection "
                         "--detector yolo, then set model.weights or pass --weights")
    model = load_weights(build_model("yolo_face", width=width, depth=depth), weights)
    return ConvolutionalPhotoDetector(model, preprocess, YoloPostprocessor(score_threshold, nms_iou), INPUT_MULTIPLE,
                                      device, nms_iou, long_side)
