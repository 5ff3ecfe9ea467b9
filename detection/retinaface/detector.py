"""RetinaFace on whole photos: resize, pad, run, decode, map back to photo pixels; optionally at several
scales and on zoomed tiles, for small faces."""
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
from common.tiling import detect_on_tiles, pad_to_multiple, resize_by
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
    """``anchors``: those the weights were trained with (``targets.FLAVORS``). ``long_side``: resize the photo
    so its longer side is this many pixels (None: original size). ``scales``: run the whole photo at each of
    these factors of that size (2.0 finds faces under the smallest anchors). ``tile_zooms``: zoom Z > 1 also
    runs overlapping tiles of 1/Z of the photo, each resized like the photo (so enlarged Z times): scale Z
    without its memory. Everything found is merged by NMS."""

    def __init__(self, model: RetinaFace, anchors: RetinaFaceAnchors, device: str | torch.device = "cpu",
                 score_threshold: float = 0.5, nms_iou: float = 0.4, long_side: int | None = 640,
                 scales: Sequence[float] = (1.0,), tile_zooms: Sequence[int] = (1,), tile_overlap: float = 0.25):
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self.postprocess = RetinaFacePostprocessor(anchors, score_threshold, nms_iou)
        self.nms_iou = nms_iou
        self.long_side = long_side
        self.scales = tuple(scales)
        self.tile_zooms = tuple(z for z in tile_zooms if z > 1)
        self.tile_overlap = tile_overlap

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
        results = []
        for image in images:
            base = self.long_side / max(image.shape[:2]) if self.long_side else 1.0

            def detect_crops(crops: list[np.ndarray], zooms: list[int]) -> list[Detections]:
                # zoom 1 is the whole photo, at every scale; a zoomed tile is enlarged by its zoom
                return [Detections.cat([self._run(crop, base * scale) for scale in self.scales]) if zoom == 1
                        else self._run(crop, base * zoom) for crop, zoom in zip(crops, zooms)]

            results.append(detect_on_tiles(image, (1, *self.tile_zooms), self.tile_overlap, detect_crops, self._merge))
        return results

    def _merge(self, parts: list[Detections]) -> Detections:
        merged = Detections.cat(parts)
        if len(parts) > 1 or len(self.scales) > 1:
            merged = merged[nms(merged.boxes, merged.scores, self.nms_iou)]
        return merged

    __call__ = detect


def retinaface_detector(weights: str | Path | None = None, backbone: str = "mobilenet0.25", flavor: str = "1mb",
                        device: str = "cpu", score_threshold: float = 0.5, nms_iou: float = 0.4,
                        long_side: int | None = 640,
                        scales: Sequence[float] = (1.0,), tile_zooms: Sequence[int] = (1,),
                        tile_overlap: float = 0.25) -> RetinaFaceDetector:
    if backbone not in BACKBONES:
        raise ConfigError(f"unknown RetinaFace backbone {backbone!r}; choose from {', '.join(BACKBONES)}")
    if weights is None:
        raise ConfigError("RetinaFace needs weights: ../shared/models/retinaface/mobilenet0.25_Final.pth "
                         "(configs/detection_retinaface.yaml) or a checkpoint from train.py --detector retinaface")
    model = load_weights(build_model(BACKBONES[backbone], leaky_slope=flavor_of(flavor).leaky_slope), weights)
    return RetinaFaceDetector(model, RetinaFaceAnchors.of_flavor(flavor), device, score_threshold, nms_iou,
                              long_side, scales, tile_zooms, tile_overlap)
