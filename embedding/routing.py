"""One embedder's space, two networks: a face too small for the embedder is embedded by its small-face student.

The student (``loss.distill`` of ``embedding.training``) was trained to give a face of 12-48 px the embedding its
teacher gives the same face at full size, so its embeddings are compared with the teacher's (a class's gallery,
enrolled from full-size photos) without anything else changing: the same chips, the same matching settings.
"""
from __future__ import annotations

import numpy as np
import torch

from common.config import ConfigError
from common.detections import face_widths
from embedding.embedder import Embedder


class SizeRoutedEmbedder:
    """``large`` for faces at least ``below_px`` wide, ``small`` (its student, same chips) for narrower ones."""

    def __init__(self, large: Embedder, small: Embedder, below_px: float):
        if small.alignment.key != large.alignment.key:
            raise ConfigError(f"the small-face embedder cuts other chips ({small.alignment.key}) than "
                              f"{large.name} ({large.alignment.key}): it must be a student of {large.name}")
        self.large, self.small, self.below_px = large, small, float(below_px)

    @property
    def name(self) -> str:  # the student lands in the teacher's space: the teacher's matching settings apply
        return self.large.name

    @property
    def cache_key(self) -> str:
        return f"{self.large.cache_key}|below{self.below_px:g}px:{self.small.cache_key}"

    @property
    def flip(self) -> bool:
        return self.large.flip

    @property
    def alignment(self):
        return self.large.alignment

    @property
    def dim(self) -> int:
        return self.large.dim

    def embed_chips(self, chips) -> torch.Tensor:
        """Chips alone carry no face size: the full-size network's embeddings."""
        return self.large.embed_chips(chips)

    def embed_faces(self, image: np.ndarray, landmarks, chips: np.ndarray | None = None
                    ) -> tuple[np.ndarray, torch.Tensor]:
        """((N, S, S, 3) chips, (N, D) embeddings): each face by the network for its size (``chips``: already
        cut)."""
        chips = self.alignment.align(image, landmarks) if chips is None else chips
        small = face_widths(landmarks) < self.below_px  # (N,)
        embeddings = torch.zeros(len(chips), self.dim)
        for network, chosen in ((self.large, ~small), (self.small, small)):
            if chosen.any():
                embeddings[torch.from_numpy(chosen)] = network.embed_chips(chips[chosen])
        return chips, embeddings
