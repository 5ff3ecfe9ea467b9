"""Raw RetinaFace outputs → ``Detections``: softmax face score, decoding, top-k, NMS."""
from __future__ import annotations

import torch

from common.boxes import nms
from common.detections import NUM_LANDMARKS, Detections
from detection.retinaface.targets import RetinaFaceAnchors

FACE_CLASS = 1


class RetinaFacePostprocessor:
    """``pre_nms_top_k`` / ``keep_top_k`` bound the work per image (the reference's 5000 / 750)."""

    def __init__(self, anchors: RetinaFaceAnchors, score_threshold: float = 0.5, nms_iou: float = 0.4,
                 pre_nms_top_k: int = 5000, keep_top_k: int = 750):
        self.anchors = anchors
        self.score_threshold, self.nms_iou = score_threshold, nms_iou
        self.pre_nms_top_k, self.keep_top_k = pre_nms_top_k, keep_top_k

    def __call__(self, box_offsets: torch.Tensor, logits: torch.Tensor, landmark_offsets: torch.Tensor,
                 input_height: int, input_width: int) -> list[Detections]:
        """(B, A, 4), (B, A, 2), (B, A, 10) for a (height, width) input → one ``Detections`` per image, in
        input pixels."""
        anchors = self.anchors.cxcywh(input_height, input_width).to(box_offsets.device)
        scores = torch.softmax(logits.float(), dim=-1)[..., FACE_CLASS]  # (B, A)
        results = []
        for image_offsets, image_scores, image_points in zip(box_offsets.float(), scores, landmark_offsets.float()):
            keep = torch.nonzero(image_scores > self.score_threshold).squeeze(1)
            keep = keep[image_scores[keep].argsort(descending=True)[:self.pre_nms_top_k]]
            boxes = self.anchors.coder.decode(image_offsets[keep], anchors[keep])  # (K, 4)
            points = self.anchors.coder.decode_points(image_points[keep].reshape(-1, NUM_LANDMARKS, 2),
                                                      anchors[keep])  # (K, 5, 2)
            kept = nms(boxes, image_scores[keep], self.nms_iou)[:self.keep_top_k]
            results.append(Detections(boxes[kept].cpu(), image_scores[keep][kept].cpu(), points[kept].cpu()))
        return results
