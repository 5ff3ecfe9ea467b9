"""RetinaFace on whole photos (``detection.photo_detector``): its weights, pixels and decoding."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from common.config import ConfigError
from common.checkpoint import load_network_weights
from common.registry import build_model
from detection.photo_detector import ConvolutionalPhotoDetector
from detection.retinaface.model import RetinaFace
from detection.retinaface.postprocess import RetinaFacePostprocessor
from detection.retinaface.targets import INPUT_MULTIPLE, RetinaFaceAnchors, flavor_of

# The reference network was trained on BGR pixels minus these per-channel means, unscaled.
BGR_MEANS = (104.0, 117.0, 123.0)
BACKBONES = {"mobilenet0.25": "retinaface_mnet025", "resnet50": "retinaface_r50"}


def preprocess(images_uint8: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB uint8 → (B, 3, H, W) float BGR minus the channel means."""
    means = torch.tensor(BGR_MEANS, device=images_uint8.device).view(1, 3, 1, 1)
    return images_uint8.flip(1).float() - means


def load_weights(model: RetinaFace, weights: str | Path) -> RetinaFace:
    """The public PyTorch RetinaFace ``.pth`` (``mobilenet0.25_Final.pth``, ``Resnet50_Final.pth``; with or
    without a ``module.`` prefix) or a checkpoint of ours."""
    return load_network_weights(model, weights, "RetinaFace", "Put mobilenet0.25_Final.pth (the public "
                                "Pytorch_Retinaface release) there, pass --weights, or train with train.py.",
                                f"RetinaFace ({model.backbone})", "is it the other backbone?")


def retinaface_detector(weights: str | Path | None = None, backbone: str = "mobilenet0.25", flavor: str = "1mb",
                        device: str = "cpu", score_threshold: float = 0.5, nms_iou: float = 0.4,
                        long_side: int | None = 640, min_face_px: float | None = None,
                        face_px: Sequence[float] = (16, 256), max_input_side: int = 2048
                        ) -> ConvolutionalPhotoDetector:
    """The photo detector (``ConvolutionalPhotoDetector`` documents the arguments); ``flavor``: the anchors and
    activations the weights were trained with (``targets.FLAVORS``)."""
    if backbone not in BACKBONES:
        raise ConfigError(f"unknown RetinaFace backbone {backbone!r}; choose from {', '.join(BACKBONES)}")
    if weights is None:
        raise ConfigError("RetinaFace needs weights: ../shared/models/retinaface/mobilenet0.25_Final.pth "
                         "(configs/detection_retinaface.yaml) or a checkpoint from train.py --detector retinaface")
    model = load_weights(build_model(BACKBONES[backbone], leaky_slope=flavor_of(flavor).leaky_slope), weights)
    # zero padding is the mean colour after ``preprocess``
    postprocess = RetinaFacePostprocessor(RetinaFaceAnchors.of_flavor(flavor), score_threshold, nms_iou)
    return ConvolutionalPhotoDetector(model, preprocess, postprocess, INPUT_MULTIPLE, device, nms_iou, long_side,
                                      min_face_px, face_px, max_input_side)
