"""Raw YuNet outputs → ``Detections``: score √(σ(class) · σ(objectness)) as OpenCV's ``FaceDetectorYN`` reports
it, decoding at the cell corners, top-k, NMS (``common.points.point_detections``)."""
from __future__ import annotations

import torch

from common.detections import Detections
from common.points import point_detections
from detection.yunet.targets import yunet_points


def face_scores(cls_logits: torch.Tensor, obj_logits: torch.Tensor) -> torch.Tensor:
    """(…, A) class and objectness logits → (…, A) face scores in [0, 1]."""
    return torch.sqrt(torch.sigmoid(cls_logits.float()) * torch.sigmoid(obj_logits.float()))


class YuNetPostprocessor:
    """``pre_nms_top_k`` / ``keep_top_k`` bound the work per image (``FaceDetectorYN``'s top_k is 5000)."""

    def __init__(self, score_threshold: float = 0.5, nms_iou: float = 0.3, pre_nms_top_k: int = 5000,
                 keep_top_k: int = 750):
        self.score_threshold, self.nms_iou = score_threshold, nms_iou
        self.pre_nms_top_k, self.keep_top_k = pre_nms_top_k, keep_top_k

    def __call__(self, box_raw: torch.Tensor, cls_logits: torch.Tensor, obj_logits: torch.Tensor,
                 landmark_raw: torch.Tensor, input_height: int, input_width: int) -> list[Detections]:
        """(B, A, 4), (B, A), (B, A), (B, A, 10) for a (height, width) input → one ``Detections`` per image, in
        input pixels, by decreasing score."""
        points, strides = (t.to(box_raw.device) for t in yunet_points(input_height, input_width))
        return point_detections(box_raw, face_scores(cls_logits, obj_logits), landmark_raw, points, strides,
                                self.score_threshold, self.nms_iou, self.pre_nms_top_k, self.keep_top_k)
