"""The one embedder interface: aligned face chips in, L2-normalised embeddings out.

An ``Embedder`` couples a network with how its chips must be made (``Alignment``) and normalised, and names
itself by (model, weights hash, alignment) so embeddings can be cached across runs. Build one by name:
``pipeline.build_embedder("facenet", weights=..., device="cpu")`` (each embedder module registers its factory).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from embedding.align import align_faces, margin_crop


@dataclass(frozen=True)
class Alignment:
    """How chips are cut: ``size``×``size`` px, 5-point ``template`` in chip px (x, y) for landmark alignment,
    ``margin`` (chip px) for the box-only fallback crop."""

    size: int
    template: tuple[tuple[float, float], ...]
    margin: float = 0.0

    # bumped whenever chips are cut differently (2: faces over twice the chip's size are shrunk by a pyramid),
    # so that embedding caches keyed by ``key`` do not serve chips of an older cut
    CUT_VERSION = 2

    @property
    def key(self) -> str:
        points = ",".join(f"{x:.2f}:{y:.2f}" for x, y in self.template)
        return f"{self.size}px-{hashlib.sha1(points.encode()).hexdigest()[:8]}-m{self.margin:g}-c{self.CUT_VERSION}"

    def align(self, image: np.ndarray, landmarks) -> np.ndarray:
        """(N, size, size, 3) uint8 chips from (N, 5, 2) landmarks in photo px."""
        return align_faces(image, landmarks, self.size, np.asarray(self.template))

    def crop(self, image: np.ndarray, boxes) -> np.ndarray:
        """(N, size, size, 3) uint8 chips from (N, 4) xyxy boxes, when there are no landmarks."""
        return margin_crop(image, boxes, self.size, self.margin)


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class Embedder:
    """``model`` maps (B, 3, S, S) float input to (B, D); chips are normalised as ``(rgb - mean) / std``."""

    def __init__(self, name: str, model: nn.Module, alignment: Alignment, mean: Sequence[float],
                 std: Sequence[float], weights_hash: str, device: str | torch.device = "cpu", batch_size: int = 64,
                 flip: bool = False):
        self.name = name
        # test-time flip: a chip's embedding is the mean of its own and its mirror image's (normalised) embeddings
        self.flip = flip
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.alignment = alignment
        self.mean = torch.tensor(mean, dtype=torch.float32).reshape(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).reshape(1, 3, 1, 1)
        self.weights_hash = weights_hash
        self.batch_size = batch_size

    @property
    def cache_key(self) -> str:
        return f"{self.name}-{self.weights_hash[:16]}-{self.alignment.key}" + ("-flip" if self.flip else "")

    def preprocess(self, chips) -> torch.Tensor:
        """(N, S, S, 3) uint8 chips (numpy or tensor) → (N, 3, S, S) normalised float32."""
        chips = torch.as_tensor(np.ascontiguousarray(chips)) if isinstance(chips, np.ndarray) else chips
        return (chips.permute(0, 3, 1, 2).float() - self.mean) / self.std

    @torch.inference_mode()
    def embed_chips(self, chips) -> torch.Tensor:
        """(N, D) float32 L2-normalised embeddings on the CPU, for (N, S, S, 3) uint8 chips."""
        outputs = [self._embed_batch(self.preprocess(chips[i:i + self.batch_size]).to(self.device))
                   for i in range(0, len(chips), self.batch_size)]
        if not outputs:
            return torch.zeros(0, self.dim)
        return F.normalize(torch.cat(outputs), dim=1)

    def _embed_batch(self, batch: torch.Tensor) -> torch.Tensor:
        """(B, D) float32 on the CPU for a (B, 3, S, S) normalised batch; with ``flip``, the sum of the unit
        embeddings of the batch and of its mirror image (normalised by the caller)."""
        embeddings = self.model(batch).float()
        if self.flip:
            embeddings = F.normalize(embeddings, dim=1) + F.normalize(self.model(batch.flip(3)).float(), dim=1)
        return embeddings.cpu()

    def embed_faces(self, image: np.ndarray, landmarks, chips: np.ndarray | None = None
                    ) -> tuple[np.ndarray, torch.Tensor]:
        """((N, S, S, 3) uint8 chips, (N, D) embeddings) of the faces at (N, 5, 2) ``landmarks`` (photo px) of one
        (H, W, 3) uint8 photo; ``chips``: this alignment's chips of them, when already cut."""
        chips = self.alignment.align(image, landmarks) if chips is None else chips
        return chips, self.embed_chips(chips)

    @property
    def dim(self) -> int:
        size = self.alignment.size
        with torch.inference_mode():
            return int(self.model(torch.zeros(1, 3, size, size, device=self.device)).shape[1])
