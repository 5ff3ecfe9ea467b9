"""YOLO face loss over SimOTA-assigned locations.

Terms, each normalised by the number of positive locations in the batch (landmarks: by the positives whose face
has all five points):
  * ``loss_box``: complete-IoU loss (``torchvision.ops.complete_box_iou_loss``) of decoded boxes;
  * ``loss_obj``: BCE of every non-ignored location's face logit against an IoU-aware target (the IoU of its box
    with its face for positives, as in YOLOX's class target; 0 for background);
  * ``loss_landmarks``: smooth-L1 of the landmark offsets in strides.
Locations assigned to an ``ignore`` face are neither positives nor background.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import complete_box_iou_loss

from common.boxes import box_iou
from common.points import SimOTAAssigner, assign_batch, decode_boxes
from detection.yolo.targets import anchor_points


class YoloLoss:
    def __init__(self, assigner: SimOTAAssigner, box_weight: float = 5.0, obj_weight: float = 1.0,
                 landmark_weight: float = 1.0):
        self.assigner = assigner
        self.box_weight, self.obj_weight, self.landmark_weight = box_weight, obj_weight, landmark_weight

    def __call__(self, box_raw: torch.Tensor, logits: torch.Tensor, landmark_raw: torch.Tensor, targets: list[dict],
                 input_height: int, input_width: int) -> dict:
        """(B, A, 4), (B, A), (B, A, 10) raw outputs and per-image targets (``boxes`` (G, 4), ``landmarks``
        (G, 5, 2) NaN where absent, ``ignore`` (G,)) → {"loss", "loss_box", "loss_obj", "loss_landmarks",
        "num_positive", "mean_iou"}."""
        points, strides = (t.to(box_raw.device) for t in anchor_points(input_height, input_width))
        pred_boxes = decode_boxes(box_raw.float(), points, strides)  # (B, A, 4)
        assignment = assign_batch(self.assigner, pred_boxes, torch.sigmoid(logits.float()), points, strides, targets)
        box_pred, box_gt = pred_boxes[assignment.positive], assignment.boxes  # (P, 4)
        num_positive = max(len(box_pred), 1)
        with_points, point_gt = assignment.encoded_landmarks()  # (L, 10)
        point_pred = landmark_raw[assignment.positive][with_points].float()
        box_loss = complete_box_iou_loss(box_pred, box_gt, reduction="sum") / num_positive
        obj_loss = (F.binary_cross_entropy_with_logits(logits.float(), assignment.ious, reduction="none")
                    * ~assignment.ignored).sum() / num_positive
        landmark_loss = F.smooth_l1_loss(point_pred, point_gt, reduction="sum") / max(len(point_pred), 1)
        total = self.box_weight * box_loss + self.obj_weight * obj_loss + self.landmark_weight * landmark_loss
        mean_iou = box_iou(box_pred.detach(), box_gt).diagonal().mean() if len(box_pred) else torch.tensor(0.0)
        return {"loss": total, "loss_box": box_loss, "loss_obj": obj_loss, "loss_landmarks": landmark_loss,
                "num_positive": torch.tensor(float(len(box_pred))), "mean_iou": mean_iou}
