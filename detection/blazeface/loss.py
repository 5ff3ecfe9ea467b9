"""BlazeFace multibox loss: focal loss or BCE with hard-negative mining, Huber on boxes and keypoints.

Every term is normalised by the number of positive anchors in the batch. Regression errors are measured in
units of the input size (an offset of 1.0 = the whole input), so the weights do not depend on the variant.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss

from common.boxes import box_iou


class BlazeFaceLoss:
    def __init__(self, input_size: int, use_focal_loss: bool = False, focal_alpha: float = 0.25,
                 focal_gamma: float = 2.0, detection_weight: float = 150.0, keypoint_weight: float = 50.0,
                 classification_weight: float = 35.0, hard_negative_ratio: float = 3.0, huber_delta: float = 0.1):
        self.input_size = input_size
        self.use_focal_loss, self.focal_alpha, self.focal_gamma = use_focal_loss, focal_alpha, focal_gamma
        self.detection_weight, self.keypoint_weight = detection_weight, keypoint_weight
        self.classification_weight = classification_weight
        self.hard_negative_ratio, self.huber_delta = hard_negative_ratio, huber_delta

    def _classification(self, raw_scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        targets = (labels == 1).float()
        if self.use_focal_loss:
            per_anchor = sigmoid_focal_loss(raw_scores, targets, self.focal_alpha, self.focal_gamma, reduction="none")
        else:
            per_anchor = F.binary_cross_entropy_with_logits(raw_scores, targets, reduction="none")  # (B, A)
        positive, negative = labels == 1, labels == 0
        # Hard-negative mining: per image keep the ratio × positives (at least ratio) worst negatives.
        num_neg = (positive.sum(1, keepdim=True) * self.hard_negative_ratio).clamp(min=self.hard_negative_ratio)
        negative_loss = per_anchor.detach().masked_fill(~negative, -1.0)
        rank = negative_loss.argsort(dim=1, descending=True).argsort(dim=1)  # (B, A) rank of each anchor
        hard_negative = negative & (rank < num_neg)
        return per_anchor[positive | hard_negative].sum()

    def __call__(self, raw_regressors: torch.Tensor, raw_scores: torch.Tensor, targets: dict) -> dict:
        """raw_regressors (B, A, 16), raw_scores (B, A) → {"loss", "loss_box", "loss_keypoints", "loss_cls"}."""
        labels = targets["labels"]
        positive = labels == 1
        num_positive = positive.sum().clamp(min=1).float()
        scale = 1.0 / self.input_size
        pred_boxes = raw_regressors[..., :4][positive] * scale  # (P, 4)
        box_loss = F.huber_loss(pred_boxes, targets["box_offsets"][positive] * scale, delta=self.huber_delta,
                                reduction="sum") / num_positive
        pred_points = raw_regressors[..., 4:].reshape(*raw_regressors.shape[:2], -1, 2)[positive]  # (P, 6, 2)
        valid = targets["keypoint_valid"][positive]  # (P, 6)
        point_loss = F.huber_loss(pred_points[valid] * scale, targets["keypoint_offsets"][positive][valid] * scale,
                                  delta=self.huber_delta, reduction="sum") / num_positive
        cls_loss = self._classification(raw_scores, labels) / num_positive
        total = (self.detection_weight * box_loss + self.keypoint_weight * point_loss
                 + self.classification_weight * cls_loss)
        return {"loss": total, "loss_box": box_loss, "loss_keypoints": point_loss, "loss_cls": cls_loss}


@torch.no_grad()
def anchor_metrics(raw_regressors: torch.Tensor, raw_scores: torch.Tensor, targets: dict, anchors) -> dict:
    """Positive accuracy, background accuracy (score threshold 0.5) and mean IoU of decoded positive boxes."""
    labels = targets["labels"]
    positive, negative = labels == 1, labels == 0
    predicted_face = raw_scores > 0
    metrics = {
        "pos_acc": predicted_face[positive].float().mean() if positive.any() else torch.tensor(0.0),
        "bg_acc": (~predicted_face[negative]).float().mean() if negative.any() else torch.tensor(0.0),
    }
    if positive.any():
        anchor_index = positive.nonzero()[:, 1]
        coder_anchors = anchors.coder_cxcywh.to(raw_regressors.device)[anchor_index]
        predicted = anchors.coder.decode(raw_regressors[..., :4][positive].float(), coder_anchors)
        target = anchors.coder.decode(targets["box_offsets"][positive], coder_anchors)
        metrics["mean_iou"] = box_iou(predicted, target).diagonal().mean()
    else:
        metrics["mean_iou"] = torch.tensor(0.0)
    return metrics
