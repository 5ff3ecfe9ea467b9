"""Raw YOLO outputs → ``Detections``: sigmoid face score, decoding, top-k, NMS (``common.points.point_detections``)."""
from __future__ import annotations

import torch

from common.detections import Detections
from common.points import point_detections
from detection.yolo.targets import anchor_points


class YoloPostprocessor:
    """``pre_nms_top_k`` / ``keep_top_k`` bound the work per image."""

    def __init__(self, score_threshold: float = 0.5, nms_iou: float = 0.45, pre_nms_top_k: int = 5000,
                 keep_top_k: int = 750):
        self.score_threshold, self.nms_iou = score_threshold, nms_iou
        self.pre_nms_top_k, self.keep_top_k = pre_nms_top_k, keep_top_k

    def __call__(self, box_raw: torch.Tensor, logits: torch.Tensor, landmark_raw: torch.Tensor,
                 input_height: int, input_width: int) -> list[Detections]:
        """(B, A, 4), (B, A), (B, A, 10) for a (height, width) input → one ``Detections`` per image, in input
        pixels, by decreasing score."""
        points, strides = (t.to(box_raw.device) for t in anchor_points(input_height, input_width))
        return point_detections(box_raw, torch.sigmoid(logits.float()), landmark_raw, points, strides,
                                self.score_threshold, self.nms_iou, self.pre_nms_top_k, self.keep_top_k)
