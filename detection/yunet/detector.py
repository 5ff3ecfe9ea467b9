"""YuNet on whole photos (``detection.photo_detector``): its weights, pixels and decoding."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from common.checkpoint import load_network_weights
from common.config import ConfigError
from common.registry import build_model
from detection.photo_detector import ConvolutionalPhotoDetector
from detection.yunet.model import YuNet
from detection.yunet.postprocess import YuNetPostprocessor
from detection.yunet.targets import INPUT_MULTIPLE

MODELS = ("yunet_n",)


def preprocess(images_uint8: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB uint8 → (B, 3, H, W) float BGR 0-255: libfacedetection.train's input (OpenCV's
    ``blobFromImage`` of a BGR photo, no mean, no scale)."""
    return images_uint8.flip(1).float()


def load_weights(model: YuNet, weights: str | Path) -> YuNet:
    """libfacedetection.train's checkpoint (``yunet_n.pth``: {meta, state_dict, optimizer}) or one of ours."""
    return load_network_weights(model, weights, "YuNet", "Put yunet_n.pth (libfacedetection.train's release) there, "
                                "pass --weights, or train with train.py --detector yunet.")


def yunet_detector(weights: str | Path | None = None, model: str = "yunet_n", device: str = "cpu",
                   score_threshold: float = 0.5, nms_iou: float = 0.3, long_side: int | None = 640,
                   min_face_px: float | None = None, face_px: Sequence[float] = (20, 448), max_input_side: int = 2048
                   ) -> ConvolutionalPhotoDetector:
    """The photo detector (``ConvolutionalPhotoDetector`` documents the arguments), padded black as
    ``FaceDetectorYN`` pads."""
    if model not in MODELS:
        raise ConfigError(f"unknown YuNet model {model!r}; choose from {', '.join(MODELS)}")
    if weights is None:
        raise ConfigError("YuNet needs weights: ../shared/models/yunet/yunet_n.pth (configs/detection_yunet.yaml) "
                         "or a checkpoint from train.py --detector yunet")
    network = load_weights(build_model(model), weights)
    return ConvolutionalPhotoDetector(network, preprocess, YuNetPostprocessor(score_threshold, nms_iou),
                                      INPUT_MULTIPLE, device, nms_iou, long_side, min_face_px, face_px,
                                      max_input_side)
