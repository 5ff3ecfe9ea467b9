"""YuNet loss over SimOTA-assigned locations (libfacedetection.train's YuNet_Head terms and weights).

Locations are assigned by ``common.points.SimOTAAssigner`` on the face score √(σ(class) · σ(objectness)). Terms,
each normalised by the number of positive locations in the batch (landmarks: by the positives whose face has
all five points):
  * ``loss_box``: IoU loss of decoded boxes — complete-IoU (``torchvision.ops.complete_box_iou_loss``) where the
    reference uses EIoU, its close relative that torchvision lacks;
  * ``loss_obj``: BCE of every non-ignored location's objectness logit against 1 for positives, 0 for background;
  * ``loss_cls``: BCE of the positives' class logit against the IoU of their box with their face (YOLOX's
    IoU-aware class target), so the score ranks well-placed boxes first;
  * ``loss_landmarks``: smooth-L1 (β = 1/9) of the landmark offsets in strides.
Locations assigned to an ``ignore`` face are neither positives nor background.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import complete_box_iou_loss

from common.boxes import box_iou
from common.points import SimOTAAssigner, assign_batch, decode_boxes
from detection.yunet.postprocess import face_scores
from detection.yunet.targets import yunet_points

LANDMARK_BETA = 1 / 9


class YuNetLoss:
    def __init__(self, assigner: SimOTAAssigner, box_weight: float = 5.0, cls_weight: float = 1.0,
                 obj_weight: float = 1.0, landmark_weight: float = 0.1):
        self.assigner = assigner
        self.box_weight, self.cls_weight, self.obj_weight = box_weight, cls_weight, obj_weight
        self.landmark_weight = landmark_weight

    def __call__(self, box_raw: torch.Tensor, cls_logits: torch.Tensor, obj_logits: torch.Tensor,
                 landmark_raw: torch.Tensor, targets: list[dict], input_height: int, input_width: int) -> dict:
        """(B, A, 4), (B, A), (B, A), (B, A, 10) raw outputs and per-image targets (``boxes`` (G, 4),
        ``landmarks`` (G, 5, 2) NaN where absent, ``ignore`` (G,)) → {"loss", "loss_box", "loss_cls", "loss_obj",
        "loss_landmarks", "num_positive", "mean_iou"}."""
        points, strides = (t.to(box_raw.device) for t in yunet_points(input_height, input_width))
        pred_boxes = decode_boxes(box_raw.float(), points, strides)  # (B, A, 4)
        assignment = assign_batch(self.assigner, pred_boxes, face_scores(cls_logits, obj_logits), points, strides,
                                  targets)
        positive = assignment.positive
        box_pred, box_gt = pred_boxes[positive], assignment.boxes  # (P, 4)
        num_positive = max(len(box_pred), 1)
        box_loss = complete_box_iou_loss(box_pred, box_gt, reduction="sum") / num_positive
        obj_loss = (F.binary_cross_entropy_with_logits(obj_logits.float(), positive.float(), reduction="none")
                    * ~assignment.ignored).sum() / num_positive
        cls_loss = F.binary_cross_entropy_with_logits(cls_logits[positive].float(), assignment.ious[positive],
                                                      reduction="sum") / num_positive
        with_points, point_gt = assignment.encoded_landmarks()  # (L, 10)
        point_pred = landmark_raw[positive][with_points].float()
        landmark_loss = F.smooth_l1_loss(point_pred, point_gt, reduction="sum", beta=LANDMARK_BETA
                                         ) / max(len(point_pred), 1)
        total = (self.box_weight * box_loss + self.cls_weight * cls_loss + self.obj_weight * obj_loss
                 + self.landmark_weight * landmark_loss)
        mean_iou = box_iou(box_pred.detach(), box_gt).diagonal().mean() if len(box_pred) else torch.tensor(0.0)
        return {"loss": total, "loss_box": box_loss, "loss_cls": cls_loss, "loss_obj": obj_loss,
                "loss_landmarks": landmark_loss, "num_positive": torch.tensor(float(len(box_pred))),
                "mean_iou": mean_iou}
