"""Raw BlazeFace outputs → ``Detections``: sigmoid with MediaPipe's score clipping, decoding, weighted NMS."""
from __future__ import annotations

import torch

from common.boxes import weighted_nms
from common.detections import Detections
from detection.blazeface.targets import NUM_MEDIAPIPE_KEYPOINTS, BlazeFaceAnchors, mediapipe_to_landmarks

SCORE_CLIPPING = 100.0  # MediaPipe's TensorsToDetectionsCalculator clips logits to ±100 before the sigmoid


class BlazeFacePostprocessor:
    def __init__(self, anchors: BlazeFaceAnchors, score_threshold: float = 0.5, nms_iou: float = 0.3):
        self.anchors = anchors
        self.score_threshold, self.nms_iou = score_threshold, nms_iou

    def __call__(self, raw_regressors: torch.Tensor, raw_scores: torch.Tensor) -> list[Detections]:
        """(B, A, 16), (B, A) → one ``Detections`` per image, in network-input pixels."""
        raw_regressors, raw_scores = raw_regressors.float().cpu(), raw_scores.float().cpu()
        anchors = self.anchors.coder_cxcywh
        scores = torch.sigmoid(raw_scores.clamp(-SCORE_CLIPPING, SCORE_CLIPPING))  # (B, A)
        boxes = self.anchors.coder.decode(raw_regressors[..., :4], anchors)  # (B, A, 4)
        offsets = raw_regressors[..., 4:].reshape(*raw_regressors.shape[:2], NUM_MEDIAPIPE_KEYPOINTS, 2)
        points = self.anchors.coder.decode_points(offsets, anchors)  # (B, A, 6, 2)
        results = []
        for image_boxes, image_scores, image_points in zip(boxes, scores, points):
            keep = image_scores >= self.score_threshold
            kept_boxes, kept_scores, kept_points = weighted_nms(image_boxes[keep], image_scores[keep], self.nms_iou,
                                                                image_points[keep])
            results.append(Detections(kept_boxes, kept_scores, mediapipe_to_landmarks(kept_points)))
        return results
