"""Metric-learning losses: triplet loss with online mining inside a P×K batch, and an ArcFace head.

Triplet distances are Euclidean between L2-normalised embeddings (FaceNet), so they lie in [0, 2] and the
margin is in the same units (FaceNet uses 0.2).

* batch-hard (Hermans et al. 2017): per anchor, its farthest positive against its nearest negative.
* semi-hard (FaceNet, Schroff et al. 2015): per (anchor, positive) pair, the nearest negative that is still
  farther than the positive; when no negative is farther, the farthest negative (the TensorFlow Addons rule).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from common.errors import InputError
from common.config import ConfigError

MINING = ("batch_hard", "semi_hard")
_DISTANCE_EPS = 1e-12  # keeps sqrt differentiable at zero distance


def pairwise_distances(embeddings: torch.Tensor) -> torch.Tensor:
    """(N, D) → (N, N) Euclidean distances."""
    squared = embeddings.pow(2).sum(1)
    gram = embeddings @ embeddings.T
    return (squared[:, None] + squared[None, :] - 2 * gram).clamp_min(_DISTANCE_EPS).sqrt()


def _masks(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    return same & ~eye, ~same  # positives (anchor ≠ positive), negatives


def batch_hard_triplet(distances: torch.Tensor, labels: torch.Tensor, margin: float):
    """Per-anchor losses and (positive, negative) distances of anchors that have both a positive and a negative."""
    positive, negative = _masks(labels)
    valid = positive.any(1) & negative.any(1)
    hardest_positive = distances.masked_fill(~positive, float("-inf")).amax(1)
    hardest_negative = distances.masked_fill(~negative, float("inf")).amin(1)
    d_ap, d_an = hardest_positive[valid], hardest_negative[valid]
    return F.relu(d_ap - d_an + margin), d_ap, d_an


def semi_hard_triplet(distances: torch.Tensor, labels: torch.Tensor, margin: float):
    """Per-(anchor, positive) losses and distances, with the semi-hard negative of each pair."""
    positive, negative = _masks(labels)
    anchors, positives = positive.nonzero(as_tuple=True)  # (M,), (M,)
    d_ap = distances[anchors, positives]  # (M,)
    d_an_all = distances[anchors]  # (M, N): every candidate for each pair
    candidate = negative[anchors]  # (M, N)
    farther = candidate & (d_an_all > d_ap[:, None])
    nearest_farther = d_an_all.masked_fill(~farther, float("inf")).amin(1)
    farthest = d_an_all.masked_fill(~candidate, float("-inf")).amax(1)
    has_negative = candidate.any(1)
    d_an = torch.where(farther.any(1), nearest_farther, farthest)
    d_ap, d_an = d_ap[has_negative], d_an[has_negative]
    return F.relu(d_ap - d_an + margin), d_ap, d_an


class TripletLoss(nn.Module):
    """``forward(embeddings (N, D) raw, labels (N,))`` → dict of named terms: ``loss`` (mean over mined triplets),
    ``active_triplet_fraction`` (share of mined triplets with a non-zero loss), ``embedding_norm`` (mean norm
    before normalisation), mean ``positive_distance`` and ``negative_distance``."""

    def __init__(self, margin: float = 0.2, mining: str = "batch_hard"):
        super().__init__()
        if mining not in MINING:
            raise ConfigError(f"loss.mining must be one of {', '.join(MINING)}, got {mining!r}")
        if margin <= 0:
            raise ConfigError(f"loss.margin must be > 0, got {margin}")
        self.margin, self.mining = margin, mining

    @torch.autocast("cuda", enabled=False)  # distances of close unit vectors need float32
    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        embeddings = embeddings.float()
        norms = embeddings.norm(dim=1)
        distances = pairwise_distances(F.normalize(embeddings, dim=1))
        mine = batch_hard_triplet if self.mining == "batch_hard" else semi_hard_triplet
        losses, d_ap, d_an = mine(distances, labels, self.margin)
        if losses.numel() == 0:
            raise InputError("triplet loss: the batch has no (anchor, positive, negative) triplet; it needs at least "
                             "two identities, one of them with two images (use the P×K sampler)")
        return {"loss": losses.mean(), "active_triplet_fraction": (losses > 0).float().mean(),
                "embedding_norm": norms.mean(), "positive_distance": d_ap.mean(), "negative_distance": d_an.mean()}


class ArcFaceHead(nn.Module):
    """Additive angular margin (Deng et al. 2019): logits ``s·cos(θ_y + m)`` for the true class and ``s·cos θ_j``
    for the others, θ the angle between the normalised embedding and class centre. Where θ_y + m would pass π
    (cos θ_y < cos(π − m)) the target logit becomes ``s·(cos θ_y − m·sin m)``, which keeps it decreasing in θ."""

    def __init__(self, embedding_dim: int, num_classes: int, scale: float = 64.0, margin: float = 0.5):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_dim))
        nn.init.xavier_uniform_(self.weight)
        self.scale, self.margin = scale, margin
        self.threshold = math.cos(math.pi - margin)
        self.fallback = math.sin(math.pi - margin) * margin

    @torch.autocast("cuda", enabled=False)  # cosines near 1 need float32
    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(N, D), (N,) → (N, num_classes) logits."""
        cosine = F.normalize(embeddings.float(), dim=1) @ F.normalize(self.weight.float(), dim=1).T
        target = cosine.gather(1, labels[:, None])  # (N, 1)
        sine = (1 - target.pow(2)).clamp_min(0).sqrt()
        with_margin = target * math.cos(self.margin) - sine * math.sin(self.margin)
        with_margin = torch.where(target > self.threshold, with_margin, target - self.fallback)
        return self.scale * cosine.scatter(1, labels[:, None], with_margin)


def arcface_terms(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"arcface_loss": F.cross_entropy(logits, labels),
            "arcface_accuracy": (logits.argmax(1) == labels).float().mean()}
