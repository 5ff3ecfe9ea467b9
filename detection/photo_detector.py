"""Whole photos through a fully convolutional detector (RetinaFace, YuNet): resize, pad, run, decode, map back to
photo pixels; or, to find faces down to a minimum size, at the scales and tiles the planner gives
(``common.tiling.plan_passes``)."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from common.boxes import nms
from common.detections import Detections
from common.tiling import check_face_sizes, detect_on_passes, pad_to_multiple, plan_passes, resize_by


class ConvolutionalPhotoDetector:
    """``preprocess``: (B, 3, h, w) RGB uint8 → the network's input; ``postprocess(*outputs, height, width)`` →
    one ``Detections`` per image in input pixels; inputs are padded with zeros (after ``preprocess``) to a
    multiple of ``input_multiple``. ``min_face_px``: find faces down to this width (photo px) at the planner's
    scales and tiles, given that the network finds faces ``face_px`` = (smallest, largest) px wide and looks at most
    ``max_input_side`` px square at once; None: resize the photo so its longer side is ``long_side`` px (None:
    original size) and look once. Everything found is merged by NMS at ``nms_iou``."""

    def __init__(self, model: torch.nn.Module, preprocess: Callable[[torch.Tensor], torch.Tensor],
                 postprocess: Callable[..., list[Detections]], input_multiple: int, device: str | torch.device = "cpu",
                 nms_iou: float = 0.4, long_side: int | None = 640, min_face_px: float | None = None,
                 face_px: Sequence[float] = (16, 256), max_input_side: int = 2048):
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self.preprocess, self.postprocess, self.input_multiple = preprocess, postprocess, input_multiple
        self.nms_iou = nms_iou
        self.long_side = long_side
        self.min_face_px, self.face_px, self.max_input_side = min_face_px, tuple(face_px), max_input_side
        check_face_sizes(min_face_px, face_px)  # now, not at the first photo

    def _run(self, image: np.ndarray, scale: float) -> Detections:
        """One crop at one scale → detections in crop pixels."""
        resized = np.ascontiguousarray(resize_by(image, scale))
        batch = torch.from_numpy(resized).permute(2, 0, 1)[None].to(self.device)  # (1, 3, h, w)
        inputs = pad_to_multiple(self.preprocess(batch), self.input_multiple)
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
