"""The pipeline as one object: detect (each configured detector, fused) → align → embed.

    from pipeline import FacePipeline
    faces = FacePipeline.from_config("configs/pipeline.yaml")("photo.jpg")
    for face in faces:                      # Face: box, score, landmarks, chip, embedding
        print(face.box, face.score)
    faces.embeddings                        # (N, D) float32, L2-normalised

``configs/pipeline.yaml`` names the fused detectors and the embedder; ``attendance.py`` and the classroom product
build their photo → faces → embeddings path from the same config.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence, Union

import numpy as np
import torch

from common.detections import Detections
from common.io import read_image
from embedding.embedder import Embedder
from embedding.fusion import FusedEmbedder
from common.engine import resolve_device
from pipeline.build import build_embedder, fusion_from_config, route_small_faces
from pipeline.config import pipeline_config

Image = Union[str, Path, np.ndarray, "PIL.Image.Image"]  # noqa: F821  (PIL is only named, not needed)


@dataclass(frozen=True)
class Face:
    """One face: ``box`` (4,) float32 xyxy pixels, ``score``, ``landmarks`` (5, 2) float32 pixels (eyes, nose,
    mouth corners, image-left first), ``chip`` (S, S, 3) uint8 RGB aligned for the embedder, ``embedding`` (D,)
    float32, L2-normalised."""

    box: np.ndarray
    score: float
    landmarks: np.ndarray
    chip: np.ndarray
    embedding: np.ndarray


@dataclass
class Faces:
    """One photo's faces: ``detections``, aligned ``chips`` (N, S, S, 3) uint8, ``embeddings`` (N, D) tensor and the
    seconds each stage took. Indexing and iteration give ``Face`` records; ``boxes``, ``scores``, ``landmarks`` are
    numpy views of the detections."""

    detections: Detections
    chips: np.ndarray
    embeddings: torch.Tensor
    timings: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.detections)

    def __getitem__(self, index: int) -> Face:
        return Face(self.boxes[index], float(self.scores[index]), self.landmarks[index], self.chips[index],
                    self.embeddings[index].detach().cpu().numpy())

    def __iter__(self) -> Iterator[Face]:
        return (self[index] for index in range(len(self)))

    @property
    def boxes(self) -> np.ndarray:
        """(N, 4) float32 xyxy pixels."""
        return self.detections.boxes.detach().cpu().numpy()

    @property
    def scores(self) -> np.ndarray:
        """(N,) float32."""
        return self.detections.scores.detach().cpu().numpy()

    @property
    def landmarks(self) -> np.ndarray:
        """(N, 5, 2) float32 pixels."""
        return self.detections.landmarks.detach().cpu().numpy()


def as_rgb_array(image: Image) -> np.ndarray:
    """(H, W, 3) uint8 RGB from a file path, a PIL image or an RGB array (read with EXIF rotation applied)."""
    if isinstance(image, (str, Path)):
        return read_image(image)
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise TypeError(f"expected an RGB uint8 (H, W, 3) array, got {image.dtype} {image.shape}")
        return image
    if hasattr(image, "convert"):  # PIL
        return np.asarray(image.convert("RGB"))
    raise TypeError(f"expected a path, a PIL image or an RGB uint8 array, got {type(image).__name__}")


class FacePipeline:
    """``pipeline(image)`` → ``Faces``. ``detector``: any photo detector (``detect(list) -> list[Detections]``);
    ``embedder``: an ``embedding.embedder.Embedder`` or a ``FusedEmbedder`` (``embedding.fusion``; the chips are
    then its first member's). ``verbose`` prints each stage's time per photo."""

    def __init__(self, detector, embedder: Embedder | FusedEmbedder, verbose: bool = False):
        self.detector, self.embedder, self.verbose = detector, embedder, verbose

    @classmethod
    def from_config(cls, config: str | Path | dict | None = None, device: str | None = None,
                    set_items: Sequence[str] = (), verbose: bool = False) -> FacePipeline:
        """The pipeline a config describes: a path to a pipeline YAML (None: ``configs/pipeline.yaml``) with
        ``set_items`` (``key=value``) on top, or an already built config dict. ``device``: default the config's."""
        cfg = config if isinstance(config, dict) else pipeline_config(config, set_items)
        device = str(resolve_device(device or cfg["device"]))
        section = cfg["embedding"]
        embedder = route_small_faces(build_embedder(section["embedder"], section["weights"], device, section["flip"]),
                                     section["small_faces"], device)
        return cls(fusion_from_config(cfg, device), embedder, verbose)

    def detect(self, image: Image) -> Detections:
        return self.detector.detect([as_rgb_array(image)])[0]

    def __call__(self, image: Image) -> Faces:
        return self.process(as_rgb_array(image))

    def process(self, image: np.ndarray, detections: Detections | None = None) -> Faces:
        """``image``'s faces (an RGB uint8 array); ``detections``: found already (skips detection)."""
        timings = {}
        start = time.perf_counter()
        if detections is None:
            detections = self.detector.detect([image])[0]
        timings["detect"] = time.perf_counter() - start
        start = time.perf_counter()
        chips, embeddings = self.embedder.embed_faces(image, detections.landmarks)
        timings["align_embed"] = time.perf_counter() - start
        if self.verbose:
            print("  ".join(f"{stage} {seconds * 1000:.0f} ms" for stage, seconds in timings.items())
                  + f"  ({len(detections)} faces)")
        return Faces(detections, chips, embeddings, timings)


def pipeline_from_config(cfg: dict, device: str | None = None, verbose: bool = False) -> FacePipeline:
    """The pipeline a pipeline config dict describes (``FacePipeline.from_config`` for a dict)."""
    return FacePipeline.from_config(cfg, device, verbose=verbose)
