"""The configs the composition root reads: a detector's (its package's defaults ← ``configs/detection_<name>.yaml``
← flags ← ``--set``) and the pipeline's (``configs/pipeline.yaml``: the fused detectors, the embedder, the
``train.py --stage all`` chain)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from common.config import PROJECT_ROOT, build_config, load_yaml
from common.registry import DETECTORS

PIPELINE_CONFIG = PROJECT_ROOT / "configs" / "pipeline.yaml"
FUSION = "fusion"  # the detector name of several detectors merged (the pipeline config's detection section)

DETECTOR_ENTRY = {"config": None, "set": [], "weight": 1.0, "landmark_weight": 1.0, "calibration": None}
PIPELINE_DEFAULTS = {
    "stage": "all",
    "detector": FUSION,
    "detection": {
        "detectors": ["blazeface", "mtcnn"],
        # per detector: its detection config, key=value overrides of it, fusion weight, calibration JSON
        "blazeface": {**DETECTOR_ENTRY, "config": "configs/detection_blazeface.yaml",
                      "set": ["inference.score_threshold=0.3"]},
        "mtcnn": {**DETECTOR_ENTRY, "config": "configs/detection_mtcnn.yaml"},
        "retinaface": {**DETECTOR_ENTRY, "config": "configs/detection_retinaface.yaml",
                       "set": ["inference.score_threshold=0.5"]},
        "yunet": {**DETECTOR_ENTRY, "config": "configs/detection_yunet.yaml",
                  "set": ["inference.score_threshold=0.5"]},
        # competent_recall: a detector counts in a face's fused score (wbf) at the face widths where its recall
        # on the calibration photos reaches this; elsewhere it abstains
        "fusion": {"method": "wbf", "iou": 0.3, "min_votes": 1, "soft_nms_method": "gaussian",
                   "soft_nms_sigma": 0.5, "competent_recall": 0.5},
    },
    # the fused detector: score_threshold on the fused score; min_face_px: the smallest face each detector is to
    # find (its inference.min_face_px: the tile planner's passes, MTCNN's pyramid)
    "inference": {"score_threshold": 0.4, "min_face_px": 20.0},
    # train.py --stage detection --config configs/pipeline.yaml: fit each detector's score calibration
    # data: an annotation file, "groups" (the group-photo benchmark's tune split), or a list of them;
    # size_bins: face-width bin edges (px) of the calibration and of each detector's recall (its competence)
    "calibration": {"data": ["groups", "../shared/data/detection/dlib_faces/training.xml"], "root": None,
                    "format": None, "method": "logistic", "iou": 0.5, "size_bins": [0, 24, 32, 48, 64, 96],
                    "out_dir": "runs/fusion/calibration", "device": "cpu"},
    # the embedder faces are aligned for and embedded with (pipeline.build_embedder)
    # flip: also embed each face's mirror image and average (test-time flip)
    "embedding": {"embedder": "dlib_resnet", "weights": None, "flip": False,
                  # faces narrower than below_px are embedded by a small-face student (weights) of the embedder
                  # member (the embedder, or one member of a fusion); null weights: off
                  "small_faces": {"member": None, "weights": None, "below_px": 40.0},
                  # train.py --stage all: the embedding stage's own config (null = skip training, use weights)
                  "train_config": None},
    # train.py --stage all: the matching stage's config (configs/matching.yaml); null = skip
    "matching": {"train_config": None},
    "device": "cpu",
    # train.py --stage all: training settings every stage takes (its flags --device, --epochs ... set them);
    # null = each stage's own config
    "train": {"device": None, "epochs": None, "batch_size": None, "lr": None, "weight_decay": None,
              "num_workers": None, "log_dir": None, "resume": None, "auto_resume": None},
    "output": {"run_dir": "runs/pipeline"},
}


def pipeline_config(config_path=None, set_items: Sequence[str] = (), flag_overrides: dict | None = None) -> dict:
    """``configs/pipeline.yaml`` (or ``config_path``) over ``PIPELINE_DEFAULTS``, then flags, then ``--set``."""
    return build_config(PIPELINE_DEFAULTS, config_path if config_path is not None else PIPELINE_CONFIG,
                        flag_overrides, set_items)


def is_pipeline_config(path) -> bool:
    """configs/pipeline.yaml and its copies: stage ``all``."""
    return path is not None and load_yaml(path).get("stage") == "all"


def default_config_path(detector: str) -> Path:
    """``configs/pipeline.yaml`` for the fused detectors, else ``configs/detection_<detector>.yaml``."""
    return PIPELINE_CONFIG if detector == FUSION else PROJECT_ROOT / "configs" / f"detection_{detector}.yaml"


def detector_defaults(detector: str) -> dict:
    """The config schema of ``detector`` (its registered defaults; the pipeline's for ``fusion``); an unknown name
    is refused here, before any config file is read. ``build_config`` copies it."""
    return PIPELINE_DEFAULTS if detector == FUSION else DETECTORS.get(detector).defaults


def detection_config(detector: str | None, config_path=None, flag_overrides: dict | None = None,
                     set_items: Sequence[str] = ()) -> dict:
    """The effective config of a detector: its defaults ← the YAML ``config_path`` (None: none) ← flags ←
    ``--set``. The detector is ``detector`` if given, else the YAML's ``detector`` key, else BlazeFace."""
    if detector is None:
        detector = (load_yaml(config_path).get("detector") if config_path else None) or "blazeface"
    overrides = {"detector": detector, **(flag_overrides or {})}
    return build_config(detector_defaults(detector), config_path, overrides, set_items)
