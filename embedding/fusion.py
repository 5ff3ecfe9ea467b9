"""Score-level fusion of several embedders, as one embedding.

Each member embeds a face from its own chip; the fused embedding is the members' L2-normalised embeddings, each
scaled by the square root of its weight share, side by side. Its length is 1, and the cosine of two fused
embeddings is the weighted mean of the members' cosines:

    cos(fused_a, fused_b) = sum_i (w_i / W) * cos_i(a, b),   W = sum_i w_i

so every consumer of cosines — the verifier's threshold, the 10-fold protocol — scores the weighted combination
of the members' scores without knowing it is one; so does attendance (``embed_faces``: each member aligns a photo's
faces its own way). The weights carry the per-embedder calibration: members whose
cosines spread differently get weights that put them on one scale (``pipeline.embedder_fusion`` fits them by
logistic regression on LFW View 1).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from common.config import ConfigError
from embedding.embedder import Embedder

SEPARATOR = "+"  # "dlib_resnet+omz0095+sface": the name of a fusion


def member_names(name: str) -> list[str]:
    """The members a fusion's name lists (one name: itself)."""
    return name.split(SEPARATOR)


class FusedEmbedder:
    """``members`` (each an ``Embedder`` with its own alignment) fused with ``weights`` (positive, any scale)."""

    def __init__(self, members: Sequence[Embedder], weights: Sequence[float]):
        if len(members) < 2 or len(weights) != len(members):
            raise ConfigError(f"a fusion needs two or more embedders and one weight each, got {len(members)} "
                              f"embedders and {len(weights)} weights")
        if any(not math.isfinite(weight) or weight < 0 for weight in weights) or sum(weights) <= 0:
            raise ConfigError(f"fusion weights must be non-negative with a positive sum, got {list(weights)}")
        self.members = list(members)
        total = float(sum(weights))
        self.shares = [float(weight) / total for weight in weights]

    @property
    def name(self) -> str:
        return SEPARATOR.join(member.name for member in self.members)

    @property
    def cache_key(self) -> str:
        return SEPARATOR.join(f"{member.cache_key}*{share:.4f}" for member, share in zip(self.members, self.shares))

    @property
    def flip(self) -> bool:
        return all(member.flip for member in self.members)

    @property
    def alignment(self):
        """The first member's alignment: the chips a fusion shows (thumbnails) and checks (enrolment sharpness)."""
        return self.members[0].alignment

    def embed_faces(self, image: np.ndarray, landmarks, chips: np.ndarray | None = None
                    ) -> tuple[np.ndarray, torch.Tensor]:
        """((N, S, S, 3) uint8 chips of the first member, (N, sum D_i) fused embeddings) of the faces at (N, 5, 2)
        ``landmarks`` of one photo: each member embeds the chips of its own alignment (``chips``: the first
        member's, when already cut)."""
        embedded = [member.embed_faces(image, landmarks, chips if index == 0 else None)
                    for index, member in enumerate(self.members)]
        return embedded[0][0], torch.from_numpy(self.fuse([embeddings for _, embeddings in embedded]))

    def fuse(self, embeddings: Sequence[np.ndarray | torch.Tensor]) -> np.ndarray:
        """(N, sum D_i) float32 unit vectors from each member's (N, D_i) L2-normalised embeddings, in order."""
        parts = [np.sqrt(share) * np.asarray(part, dtype=np.float32) for share, part in zip(self.shares, embeddings)]
        return np.concatenate(parts, axis=1)  # (N, D_1 + D_2 + ...)

    def describe(self) -> dict:
        return {member.name: round(share, 4) for member, share in zip(self.members, self.shares)}
