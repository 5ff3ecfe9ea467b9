"""Several photo detectors as one: run each on a photo, calibrate their scores, and merge their faces
(``FusionDetector``); and any photo detector also run on overlapping zoomed tiles of the photo, the tiles' faces
merged by the same fusion (``TiledDetector``). It fuses any objects with ``detect(images)``; which detectors, with
which configs, is the composition root's business (``pipeline.build.fusion_from_config``).
"""
from __future__ import annotations

import time
from typing import Sequence

import numpy as np

from common.config import ConfigError
from common.detections import Detections
from common.tiling import detect_on_tiles
from fusion.merge import FusionSettings, fuse


class FusionDetector:
    """``detect(images)`` → one fused ``Detections`` per photo. ``detectors`` maps names to photo detectors;
    ``calibrators`` (optional, per name) map raw scores to calibrated ones before fusion."""

    def __init__(self, detectors: dict, settings: FusionSettings, calibrators: dict | None = None,
                 score_threshold: float = 0.0):
        if not detectors:
            raise ConfigError("fusion needs at least one detector")
        self.detectors, self.settings = detectors, settings
        self.calibrators = calibrators or {}
        self.score_threshold = score_threshold
        self.timings: dict[str, float] = {name: 0.0 for name in detectors}

    def detect_each(self, images: Sequence[np.ndarray]) -> dict[str, list[Detections]]:
        """Every detector's calibrated faces: name → one ``Detections`` per photo. Adds to ``timings``."""
        found = {}
        for name, detector in self.detectors.items():
            start = time.perf_counter()
            results = detector.detect(images)
            self.timings[name] += time.perf_counter() - start
            calibrate = self.calibrators.get(name)
            if calibrate is not None:
                results = [Detections(d.boxes, calibrate(d.scores), d.landmarks) for d in results]
            found[name] = results
        return found

    def merge(self, per_detector: dict[str, list[Detections]]) -> list[Detections]:
        names = list(self.detectors)
        merged = []
        for index in range(len(per_detector[names[0]])):
            fused, _ = fuse([per_detector[name][index] for name in names], self.settings)
            merged.append(fused[fused.scores >= self.score_threshold])
        return merged

    def detect(self, images: Sequence[np.ndarray]) -> list[Detections]:
        images = list(images)
        return self.merge(self.detect_each(images)) if images else []

    __call__ = detect


class TiledDetector:
    """Any photo detector also run on overlapping tiles (zoom z: tiles of 1/z of the photo's longer side); faces cut
    by a tile's inner edge are dropped and the rest merged with ``settings`` (each tile is one source)."""

    def __init__(self, detector, zooms: Sequence[int], settings: FusionSettings, overlap: float = 0.25):
        self.detector, self.zooms, self.overlap = detector, tuple(zooms), overlap
        self.settings = FusionSettings(**{**settings.__dict__, "weights": None, "min_votes": 1})

    def detect(self, images: Sequence[np.ndarray]) -> list[Detections]:
        return [detect_on_tiles(image, self.zooms, self.overlap, lambda crops, _: self.detector.detect(crops),
                                lambda parts: fuse(parts, self.settings)[0]) for image in images]

    __call__ = detect
