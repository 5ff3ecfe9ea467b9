"""RetinaFace multibox loss.

Default (the reference's): softmax cross-entropy over face/background with hard-negative mining (the
``hard_negative_ratio`` × positives most confident background anchors per image), smooth-L1 on the box
offsets weighted by ``box_weight``, smooth-L1 on the landmark offsets of faces that have all five points.
Options: focal loss on every non-ignored anchor instead of mining, and GIoU loss on the decoded boxes instead
of smooth-L1 on offsets. Box and class terms are normalised by the number of positive anchors, the landmark
term by the number of positives with landmarks.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

from common.config import ConfigError
from common.box_coder import BoxCoder
from common.boxes import box_iou
from detection.retinaface.postprocess import FACE_CLASS


class RetinaFaceLoss:
    def __init__(self, anchors_cxcywh: torch.Tensor, coder: BoxCoder, hard_negative_ratio: float = 3.0,
                 box_weight: float = 2.0, landmark_weight: float = 1.0, use_focal_loss: bool = False,
                 focal_alpha: float = 0.25, focal_gamma: float = 2.0, box_loss: str = "smooth_l1"):
        if box_loss not in ("smooth_l1", "giou"):
            raise ConfigError(f"box_loss must be 'smooth_l1' or 'giou', got {box_loss!r}")
        self.anchors_cxcywh, self.coder = anchors_cxcywh, coder
        self.hard_negative_ratio = hard_negative_ratio
        self.box_weight, self.landmark_weight = box_weight, landmark_weight
        self.use_focal_loss, self.focal_alpha, self.focal_gamma = use_focal_loss, focal_alpha, focal_gamma
        self.box_loss = box_loss

    def _classification(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        positive, negative = labels == 1, labels == 0
        if self.use_focal_loss:
            # Two-class softmax = sigmoid of the logit difference.
            face_logit = logits[..., FACE_CLASS] - logits[..., 1 - FACE_CLASS]  # (B, A)
            per_anchor = sigmoid_focal_loss(face_logit, positive.float(), self.focal_alpha, self.focal_gamma,
                                            reduction="none")
            return per_anchor[positive | negative].sum()
        per_anchor = F.cross_entropy(logits.flatten(0, 1), positive.long().flatten(), reduction="none"
                                     ).view_as(labels)  # (B, A)
        # Hard-negative mining: per image keep the ratio × positives (at least ratio) worst negatives.
        num_negative = (positive.sum(1, keepdim=True) * self.hard_negative_ratio).clamp(min=self.hard_negative_ratio)
        negative_loss = per_anchor.detach().masked_fill(~negative, -1.0)
        rank = negative_loss.argsort(dim=1, descending=True).argsort(dim=1)  # (B, A) rank of each anchor
        return per_anchor[positive | (negative & (rank < num_negative))].sum()

    def __call__(self, box_offsets: torch.Tensor, logits: torch.Tensor, landmark_offsets: torch.Tensor,
                 targets: dict) -> dict:
        """(B, A, 4), (B, A, 2), (B, A, 10) and ``RetinaFaceTargetBuilder`` targets →
        {"loss", "loss_box", "loss_landmarks", "loss_cls"}."""
        labels = targets["labels"]
        positive = labels == 1
        num_positive = positive.sum().clamp(min=1).float()
        if self.box_loss == "giou":
            anchors = self.anchors_cxcywh.to(box_offsets.device).expand(labels.shape[0], -1, -1)[positive]
            predicted = self.coder.decode(box_offsets[positive], anchors)  # (P, 4)
            box_loss = generalized_box_iou_loss(predicted, targets["boxes"][positive], reduction="sum")
        else:
            box_loss = F.smooth_l1_loss(box_offsets[positive], targets["box_offsets"][positive], reduction="sum")
        box_loss = box_loss / num_positive
        with_points = positive & targets["landmark_valid"]
        predicted_points = landmark_offsets[with_points]  # (L, 10)
        landmark_loss = F.smooth_l1_loss(predicted_points, targets["landmark_offsets"][with_points].flatten(1),
                                         reduction="sum") / with_points.sum().clamp(min=1)
        cls_loss = self._classification(logits, labels) / num_positive
        total = self.box_weight * box_loss + self.landmark_weight * landmark_loss + cls_loss
        return {"loss": total, "loss_box": box_loss, "loss_landmarks": landmark_loss, "loss_cls": cls_loss}


@torch.no_grad()
def anchor_metrics(box_offsets: torch.Tensor, logits: torch.Tensor, targets: dict, anchors_cxcywh: torch.Tensor,
                   coder: BoxCoder) -> dict:
    """Positive accuracy, background accuracy (argmax) and mean IoU of decoded positive boxes."""
    labels = targets["labels"]
    positive, negative = labels == 1, labels == 0
    predicted_face = logits.argmax(-1) == FACE_CLASS
    zero = torch.tensor(0.0)
    metrics = {"pos_acc": predicted_face[positive].float().mean() if positive.any() else zero,
               "bg_acc": (~predicted_face[negative]).float().mean() if negative.any() else zero,
               "mean_iou": zero}
    if positive.any():
        anchors = anchors_cxcywh.to(box_offsets.device).expand(labels.shape[0], -1, -1)[positive]
        predicted = coder.decode(box_offsets[positive].float(), anchors)
        metrics["mean_iou"] = box_iou(predicted, targets["boxes"][positive]).diagonal().mean()
    return metrics
