"""Several photo detectors as one: run each on a photo, calibrate their scores by face size, and merge their
faces, each detector abstaining at face sizes it cannot find (``FusionDetector``). It fuses any objects with
``detect(images)``; which detectors, with which configs, is the composition root's business
(``pipeline.build.fusion_from_config``).
"""
from __future__ import annotations

import time
from typing import Sequence

import numpy as np

from common.config import ConfigError
from common.detections import Detections
from fusion.merge import FusionSettings, fuse


class FusionDetector:
    """``detect(images)`` → one fused ``Detections`` per photo. ``detectors`` maps names to photo detectors;
    ``calibrators`` (optional, per name, ``fusion.calibration.ScoreCalibrator``) map raw scores to calibrated
    ones before fusion and say at which face widths a detector is competent: where its recall on the fitting
    photos reaches ``settings.competent_recall`` (a detector elsewhere neither adds to nor subtracts from a face's
    score)."""

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
                results = [Detections(d.boxes, calibrate(d.scores, d.boxes[:, 2] - d.boxes[:, 0]), d.landmarks)
                           for d in results]
            found[name] = results
        return found

    def merge(self, per_detector: dict[str, list[Detections]]) -> list[Detections]:
        names = list(self.detectors)
        competent = [(lambda widths, c=self.calibrators[name]: c.competent(widths, self.settings.competent_recall))
                     if name in self.calibrators else None for name in names]
        merged = []
        for index in range(len(per_detector[names[0]])):
            fused, _ = fuse([per_detector[name][index] for name in names], self.settings, competent)
            merged.append(fused[fused.scores >= self.score_threshold])
        return merged

    def detect(self, images: Sequence[np.ndarray]) -> list[Detections]:
        images = list(images)
        return self.merge(self.detect_each(images)) if images else []

    __call__ = detect
