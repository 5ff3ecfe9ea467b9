"""RetinaFace on whole photos: resize, pad, run, decode, map back to photo pixels; or, to find faces down to a
minimum size, at the scales and tiles the planner gives (``common.tiling.plan_passes``)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from common.errors import InputError
from common.config import ConfigError
from common.boxes import nms
from common.checkpoint import model_state_from_file, state_mismatch
from common.detections import Detections
from common.registry import build_model
from common.tiling import check_face_sizes, detect_on_passes, pad_to_multiple, plan_passes, resize_by
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
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"RetinaFace weights not found: {path}. Put mobilenet0.25_Final.pth (the public "
                                "Pytorch_Retinaface release) there, pass --weights, or train with train.py.")
    state = model_state_from_file(path)
    state = {key.removeprefix("module."): value for key, value in state.get("state_dict", state).items()}
    mismatch = state_mismatch(model.state_dict(), state)
    if mismatch:
        raise InputError(f"{path} does not fit RetinaFace ({model.backbone}): {mismatch}; is it the other backbone?")
    model.load_state_dict(state)
    return model


class RetinaFaceDetector:
    """``anchors``: those the weights were trained with (``targets.FLAVORS``). ``min_face_px``: find faces down to
    this width (photo px) at the planner's scales and tiles, given that the network finds faces ``face_px`` =
    (smallest, largest) px wide and looks at most ``max_input_side`` px square at once; None: resize the photo so
    its longer side is ``long_side`` px (None: original size) and look once. Everything found is merged by NMS."""

    def __init__(self, model: RetinaFace, anchors: RetinaFaceAnchors, device: str | torch.device = "cpu",
                 score_threshold: float = 0.5, nms_iou: float = 0.4, long_side: int | None = 640,
                 min_face_px: float | None = None, face_px: Sequence[float] = (16, 256),
                 max_input_side: int = 2048):
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self.postprocess = RetinaFacePostprocessor(anchors, score_threshold, nms_iou)
        self.nms_iou = nms_iou
        self.long_side = long_side
        self.min_face_px, self.face_px, self.max_input_side = min_face_px, tuple(face_px), max_input_side
        check_face_sizes(min_face_px, face_px)  # now, not at the first photo

    def _run(self, image: np.ndarray, scale: float) -> Detections:
        """One crop at one scale → detections in crop pixels."""
        resized = np.ascontiguousarray(resize_by(image, scale))
        batch = torch.from_numpy(resized).permute(2, 0, 1)[None].to(self.device)  # (1, 3, h, w)
        # zero padding is the mean colour after ``preprocess``
        inputs = pad_to_multiple(preprocess(batch), INPUT_MULTIPLE)
        detections = self.postprocess(*self.model(inputs), *inputs.shape[-2:])[0]
        # the resized size was rounded: map back with the exact per-axis ratios
        return detections.scaled(image.shape[1] / resized.shape[1], image.shape[0] / resized.shape[0])

    @torch.inference_mode()
    def detect(self, images: Sequence[np.ndarray]) -> list[Detections]:
        """RGB uint8 (H, W, 3) photos → one ``Detections`` each, in photo pixels, by decreasing score."""
        if self.min_face_px is None:
            return [self._run(image, self.long_side / max(image.shape[:2]) if self.long_side else 1.0)
                    for image in images]
        return [detect_on_passes(image, plan_passes(*image.shape[:2], self.min_face_px, self.face_px,
                                                    self.max_input_side),
                                 lambda crops, scales: [self._run(crop, scale) for crop, scale in zip(crops, scales)],
                                 self._merge) for image in images]

    def _merge(self, parts: list[Detections]) -> Detections:
        merged = Detections.cat(parts)
        return merged[nms(merged.boxes, merged.scores, self.nms_iou)] if len(parts) > 1 else merged

    __call__ = detect


def retinaface_detector(weights: str | Path | None = None, backbone: str = "mobilenet0.25", flavor: str = "1mb",
                        device: str = "cpu", score_threshold: float = 0.5, nms_iou: float = 0.4,
                        long_side: int | None = 640, min_face_px: float | None = None,
                        face_px: Sequence[float] = (16, 256), max_input_side: int = 2048) -> RetinaFaceDetector:
    if backbone not in BACKBONES:
        raise ConfigError(f"unknown RetinaFace backbone {backbone!r}; choose from {', '.join(BACKBONES)}")
    if weights is None:
        raise ConfigError("RetinaFace needs weights: ../shared/models/retinaface/mobilenet0.25_Final.pth "
                         "(configs/detection_retinaface.yaml) or a checkpoint from train.py --detector retinaface")
    model = load_weights(build_model(BACKBONES[backbone], leaky_slope=flavor_of(flavor).leaky_slope), weights)
    return RetinaFaceDetector(model, RetinaFaceAnchors.of_flavor(flavor), device, score_threshold, nms_iou,
                              long_side, min_face_px, face_px, max_input_side)
