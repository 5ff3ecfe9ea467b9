"""MTCNN's multi-task loss (Zhang et al. 2016, section 2.2–2.3) and per-batch accuracy figures.

* face / non-face: cross-entropy on positives and negatives, keeping only the hardest ``ohem_keep`` (70 %) of the
  per-sample losses (online hard example mining), averaged over those kept;
* box: squared Euclidean distance of the 4 offsets (or smooth L1 summed over them) on positives and part faces,
  averaged over those samples;
* landmarks: the same on the 10 coordinates of landmark samples.

``loss = cls_weight * loss_cls + box_weight * loss_box + landmark_weight * loss_landmarks``; a term with no sample in
the batch is 0 (still attached to the graph, so DDP sees every parameter used).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from common.config import ConfigError
from detection.mtcnn.targets import LANDMARK, NEGATIVE, PART, POSITIVE

# Task weights of the paper: P-Net and R-Net (det 1, box 0.5, landmarks 0.5), O-Net (det 1, box 0.5, landmarks 1).
PAPER_TASK_WEIGHTS = {
    "pnet": {"cls": 1.0, "box": 0.5, "landmarks": 0.5},
    "rnet": {"cls": 1.0, "box": 0.5, "landmarks": 0.5},
    "onet": {"cls": 1.0, "box": 0.5, "landmarks": 1.0},
}
BOX_LOSSES = ("mse", "smooth_l1")


def _regression(pred: torch.Tensor, target: torch.Tensor, kind: str, beta: float) -> torch.Tensor:
    """Per-sample regression loss, summed over coordinates: (K, D) → (K,)."""
    if kind == "mse":
        return ((pred - target) ** 2).sum(dim=1)
    return F.smooth_l1_loss(pred, target, reduction="none", beta=beta).sum(dim=1)


def _mean_or_zero(values: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
    return values.mean() if values.numel() else anchor.sum() * 0.0


class MTCNNLoss(torch.nn.Module):
    def __init__(self, cls_weight: float = 1.0, box_weight: float = 0.5, landmark_weight: float = 0.5,
                 ohem_keep: float = 0.7, box_loss: str = "mse", smooth_l1_beta: float = 0.1):
        super().__init__()
        if not 0.0 < ohem_keep <= 1.0:
            raise ConfigError(f"ohem_keep must lie in (0, 1], got {ohem_keep}")
        if box_loss not in BOX_LOSSES:
            raise ConfigError(f"box_loss must be one of {', '.join(BOX_LOSSES)}, got {box_loss!r}")
        self.cls_weight, self.box_weight, self.landmark_weight = cls_weight, box_weight, landmark_weight
        self.ohem_keep, self.box_loss, self.beta = ohem_keep, box_loss, smooth_l1_beta

    def forward(self, face_logits: torch.Tensor, box_offsets: torch.Tensor, landmarks: torch.Tensor | None,
                labels: torch.Tensor, box_targets: torch.Tensor, landmark_targets: torch.Tensor) -> dict:
        """``face_logits`` (B, 2), ``box_offsets`` (B, 4), ``landmarks`` (B, 10) or None for nets without a landmark
        head; targets as ``MTCNNSampleDataset`` yields them."""
        if face_logits.ndim != 2 or face_logits.shape[1] != 2 or box_offsets.shape != (len(face_logits), 4):
            raise ValueError(f"expected face_logits (B, 2) and box_offsets (B, 4), got {tuple(face_logits.shape)} "
                             f"and {tuple(box_offsets.shape)} (flatten P-Net's 1×1 maps first)")
        labels = labels.to(face_logits.device)
        is_cls = (labels == POSITIVE) | (labels == NEGATIVE)
        per_sample = F.cross_entropy(face_logits[is_cls].float(), labels[is_cls], reduction="none")
        keep = max(1, math.ceil(self.ohem_keep * per_sample.numel())) if per_sample.numel() else 0
        loss_cls = _mean_or_zero(per_sample.topk(keep).values if keep else per_sample, face_logits)

        is_box = (labels == POSITIVE) | (labels == PART)
        loss_box = _mean_or_zero(_regression(box_offsets[is_box].float(), box_targets[is_box].to(box_offsets),
                                             self.box_loss, self.beta), box_offsets)

        if landmarks is not None:
            is_landmark = labels == LANDMARK
            loss_landmarks = _mean_or_zero(_regression(landmarks[is_landmark].float(),
                                                       landmark_targets[is_landmark].to(landmarks), self.box_loss,
                                                       self.beta), landmarks)
        else:
            loss_landmarks = face_logits.new_zeros(())
        loss = self.cls_weight * loss_cls + self.box_weight * loss_box + self.landmark_weight * loss_landmarks
        return {"loss": loss, "loss_cls": loss_cls.detach(), "loss_box": loss_box.detach(),
                "loss_landmarks": loss_landmarks.detach()}


@torch.no_grad()
def classification_metrics(face_logits: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Face / non-face accuracy on positives and negatives (argmax of the logits), and per class:
    ``positive_accuracy`` (recall of faces) and ``negative_accuracy``. NaN-free: a class absent from the batch
    counts as 1."""
    labels = labels.to(face_logits.device)
    predicted = face_logits.argmax(dim=1)
    positive, negative = labels == POSITIVE, labels == NEGATIVE
    correct_pos = (predicted[positive] == 1).float()
    correct_neg = (predicted[negative] == 0).float()
    both = torch.cat([correct_pos, correct_neg])
    one = face_logits.new_ones(())
    return {"accuracy": both.mean() if both.numel() else one,
            "positive_accuracy": correct_pos.mean() if correct_pos.numel() else one,
            "negative_accuracy": correct_neg.mean() if correct_neg.numel() else one}
