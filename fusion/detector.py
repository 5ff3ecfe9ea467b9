"""``--detector fusion``: run several detectors on each photo, calibrate their scores, and merge their faces.

The ``detection`` section of ``configs/pipeline.yaml`` names the detectors that run (each with its own detection
config and ``--set``-style overrides), a weight and an optional score calibration file per detector, and the
fusion method. ``inference.tile_zooms`` > 1 also runs the fused detectors on overlapping tiles of the photo and
merges the tiles' faces with the same fusion (``TiledDetector``).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import numpy as np

from common.config import ConfigError, project_path
from common.detections import Detections
from common.tiling import drop_cut_faces, make_tiles
from fusion.calibration import METHODS as CALIBRATION_METHODS
from fusion.calibration import ScoreCalibrator, labelled_scores
from fusion.merge import FusionSettings, fuse

DETECTOR_ENTRY = {"config": None, "set": [], "weight": 1.0, "calibration": None}
FUSION_DEFAULTS = {
    "stage": "detection",
    "detector": "fusion",
    "detection": {
        "detectors": ["blazeface", "mtcnn"],
        # per detector: its detection config, key=value overrides of it, fusion weight, calibration JSON
        "blazeface": {**DETECTOR_ENTRY, "config": "configs/detection_blazeface.yaml",
                      "set": ["inference.score_threshold=0.3"]},
        "mtcnn": {**DETECTOR_ENTRY, "config": "configs/detection_mtcnn.yaml"},
        "fusion": {"method": "wbf", "iou": 0.5, "min_votes": 1, "soft_nms_method": "gaussian",
                   "soft_nms_sigma": 0.5},
    },
    # the fused detector on whole photos; zooms > 1 add overlapping tiles, merged by the same fusion
    "inference": {"score_threshold": 0.3, "tile_zooms": [1], "tile_overlap": 0.25},
    # train.py --stage detection --config configs/pipeline.yaml: fit each detector's score calibration
    "calibration": {"data": "../shared/data/detection/dlib_faces/training.xml", "root": None, "format": None,
                    "method": "logistic", "iou": 0.5, "out_dir": "runs/fusion/calibration", "device": "cpu"},
}


# Calibration learns from misses too: each detector runs with thresholds low enough to make some.
LOOSE_THRESHOLDS = {"blazeface": ["inference.score_threshold=0.05"], "mtcnn": ["inference.thresholds=[0.6, 0.7, 0.1]"]}


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
        results = []
        for image in images:
            height, width = image.shape[:2]
            tiles = make_tiles(height, width, self.zooms, self.overlap)
            per_tile = self.detector.detect([np.ascontiguousarray(image[y1:y2, x1:x2]) for x1, y1, x2, y2 in tiles])
            parts = [drop_cut_faces(found.scaled(1, 1, x1, y1), (x1, y1, x2, y2), height, width)
                     for found, (x1, y1, x2, y2) in zip(per_tile, tiles)]
            results.append(fuse(parts, self.settings)[0])
        return results

    __call__ = detect


def _detector_config(name: str, entry: dict, loose: bool = False) -> dict:
    from detection.training import DETECTORS, default_config_path, detection_config
    if name not in DETECTORS or name == "fusion":
        raise ConfigError(f"detection.detectors: unknown detector {name!r}; choose from "
                          f"{', '.join(sorted(set(DETECTORS) - {'fusion'}))}")
    config = entry["config"]
    path = project_path(config) if config else default_config_path(name)
    return detection_config(name, path, set_items=[*entry["set"], *(LOOSE_THRESHOLDS.get(name, []) if loose else [])])


def _entries(cfg: dict) -> dict[str, dict]:
    section = cfg["detection"]
    names = section["detectors"]
    if not names:
        raise ConfigError("detection.detectors is empty: name at least one detector to fuse")
    missing = [name for name in names if name not in section]
    if missing:
        raise ConfigError(f"detection.detectors names {', '.join(missing)} but the config has no detection."
                          f"{missing[0]} section; add one like detection.blazeface")
    return {name: section[name] for name in names}


def fusion_settings(cfg: dict, weights: list[float] | None = None) -> FusionSettings:
    return FusionSettings(**cfg["detection"]["fusion"], weights=weights)


def fusion_from_config(cfg: dict, device: str):
    """The fused (and, with tile zooms, tiled) photo detector a pipeline config describes."""
    from detection.training import detector_from_config
    entries = _entries(cfg)
    detectors = {name: detector_from_config(_detector_config(name, entry), device) for name, entry in entries.items()}
    calibrators = {name: ScoreCalibrator.load(project_path(entry["calibration"]))
                   for name, entry in entries.items() if entry["calibration"]}
    settings = fusion_settings(cfg, [entry["weight"] for entry in entries.values()])
    inference = cfg["inference"]
    fused = FusionDetector(detectors, settings, calibrators, inference["score_threshold"])
    zooms = inference["tile_zooms"]
    return fused if tuple(zooms) == (1,) else TiledDetector(fused, zooms, settings, inference["tile_overlap"])


def fit_fusion_calibration(cfg: dict) -> dict[str, Path]:
    """Fit each detector's score calibration on ``calibration.data`` and write ``<out_dir>/<detector>.json``.
    The detectors run with ``LOOSE_THRESHOLDS`` so the fit sees low-scoring misses as well as hits."""
    from common.io import read_image
    from detection.evaluation import load_benchmark
    from detection.training import detector_from_config
    from tqdm import tqdm

    section = cfg["calibration"]
    if section["method"] not in CALIBRATION_METHODS:
        raise ConfigError(f"calibration.method must be one of {', '.join(CALIBRATION_METHODS)}")
    items = load_benchmark(section["data"], section["root"], section["format"])
    images = [read_image(item["image_path"]) for item in tqdm(items, desc="reading", unit="photo")]
    written = {}
    for name, entry in _entries(cfg).items():
        detector = detector_from_config(_detector_config(name, entry, loose=True), section["device"])
        found = [detector.detect([image])[0] for image in tqdm(images, desc=f"{name} on calibration photos")]
        scores, hits = labelled_scores(found, items, section["iou"])
        calibrator = ScoreCalibrator(section["method"]).fit(scores, hits)
        written[name] = calibrator.save(Path(section["out_dir"]) / f"{name}.json")
        print(f"{name}: {int(hits.sum())} hits / {len(hits)} detections → {written[name]} "
              f"(set detection.{name}.calibration to use it)")
    return written
