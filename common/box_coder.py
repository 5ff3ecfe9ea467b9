"""Encode boxes and keypoints as offsets from anchors, and decode them back.

``size_mode="log"`` is the SSD/RetinaFace coder: ``d_xy = (g_xy - a_xy) / (v_c * a_wh)``,
``d_wh = log(g_wh / a_wh) / v_s``. ``size_mode="linear"`` is MediaPipe's: ``d_wh = g_wh / (v_s * a_wh)``, which
with input-sized anchors and ``v = 1 / input_size`` makes every offset a plain pixel distance.
"""
from __future__ import annotations

import torch

from common.boxes import cxcywh_to_xyxy, xyxy_to_cxcywh


class BoxCoder:
    def __init__(self, center_variance: float = 0.1, size_variance: float = 0.2, size_mode: str = "log"):
        if size_mode not in ("log", "linear"):
            raise ValueError(f"size_mode must be 'log' or 'linear', got {size_mode!r}")
        self.center_variance = center_variance
        self.size_variance = size_variance
        self.size_mode = size_mode

    def encode(self, boxes_xyxy: torch.Tensor, anchors_cxcywh: torch.Tensor) -> torch.Tensor:
        """(N, 4) boxes matched to (N, 4) anchors → (N, 4) offsets ``(dx, dy, dw, dh)``."""
        boxes = xyxy_to_cxcywh(boxes_xyxy)
        d_xy = (boxes[:, :2] - anchors_cxcywh[:, :2]) / (self.center_variance * anchors_cxcywh[:, 2:])
        if self.size_mode == "log":
            d_wh = torch.log(boxes[:, 2:].clamp(min=1e-6) / anchors_cxcywh[:, 2:]) / self.size_variance
        else:
            d_wh = boxes[:, 2:] / (self.size_variance * anchors_cxcywh[:, 2:])
        return torch.cat([d_xy, d_wh], dim=1)

    def decode(self, offsets: torch.Tensor, anchors_cxcywh: torch.Tensor) -> torch.Tensor:
        """(..., A, 4) offsets against (A, 4) anchors → (..., A, 4) xyxy boxes."""
        centres = anchors_cxcywh[:, :2] + offsets[..., :2] * self.center_variance * anchors_cxcywh[:, 2:]
        if self.size_mode == "log":
            sizes = anchors_cxcywh[:, 2:] * torch.exp(offsets[..., 2:4] * self.size_variance)
        else:
            sizes = anchors_cxcywh[:, 2:] * offsets[..., 2:4] * self.size_variance
        shape = centres.shape[:-1]
        return cxcywh_to_xyxy(torch.cat([centres, sizes], dim=-1).reshape(-1, 4)).reshape(*shape, 4)

    def encode_points(self, points: torch.Tensor, anchors_cxcywh: torch.Tensor) -> torch.Tensor:
        """(N, K, 2) points matched to (N, 4) anchors → (N, K, 2) offsets."""
        return (points - anchors_cxcywh[:, None, :2]) / (self.center_variance * anchors_cxcywh[:, None, 2:])

    def decode_points(self, offsets: torch.Tensor, anchors_cxcywh: torch.Tensor) -> torch.Tensor:
        """(..., A, K, 2) offsets against (A, 4) anchors → (..., A, K, 2) points."""
        return anchors_cxcywh[:, None, :2] + offsets * self.center_variance * anchors_cxcywh[:, None, 2:]
