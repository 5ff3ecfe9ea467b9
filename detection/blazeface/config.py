"""BlazeFace's config schema and defaults (``configs/detection_blazeface.yaml`` overrides them) and the photo
detector a config describes."""
from __future__ import annotations

from common.config import existing_path
from detection.blazeface.detector import BlazeFaceDetector, blazeface_detector
from detection.data.dataset import DEFAULT_AUGMENTATION

BLAZEFACE_DEFAULTS = {
    "stage": "detection",
    "detector": "blazeface",
    # freeze_batchnorm: null = frozen when starting from weights (see BlazeFace.train), else trained
    # weights: null = the variant's file in mediapipe_weights (none for "back")
    "model": {"variant": "front", "pretrained": False, "weights": None, "freeze_batchnorm": None,
              "mediapipe_weights": {"front": None, "full": None}},
    "data": {"format": "auto", "train": None, "val": None, "root": None, "val_fraction": 0.2, "split_seed": 42,
             "augment": True, "augmentation": dict(DEFAULT_AUGMENTATION)},
    "loss": {"use_focal_loss": False, "focal_alpha": 0.25, "focal_gamma": 2.0, "detection_weight": 150.0,
             "keypoint_weight": 50.0, "classification_weight": 35.0, "hard_negative_ratio": 3.0,
             "huber_delta": 0.1, "positive_iou": 0.5, "negative_iou": 0.35},
    "train": {"epochs": 500, "batch_size": 32, "lr": 1e-4, "weight_decay": 1e-4, "grad_clip": 10.0,
              "num_workers": 4, "device": "auto", "seed": 0, "amp": True, "checkpoint_every": 10},
    "eval": {"score_threshold": 0.05, "nms_iou": 0.3},
    # infer.py / evaluate.py on whole photos, tiled by the planner (common/tiling.py) down to min_face_px faces
    # (null: the whole photo once); face_px: the face widths it finds at its input (null: the variant's, measured:
    # detection/blazeface/detector.py FACE_PX).
    "inference": {"score_threshold": 0.75, "nms_iou": 0.3, "min_face_px": 20.0, "face_px": None},
    "output": {"checkpoint_dir": "checkpoints", "log_dir": "logs", "resume": None, "auto_resume": True},
}


def blazeface_weights(model: dict) -> str | None:
    """``model.weights``, or without them the variant's MediaPipe file (``model.mediapipe_weights``)."""
    return existing_path(model["weights"] or model["mediapipe_weights"].get(model["variant"]))


def blazeface_from_config(cfg: dict, device: str) -> BlazeFaceDetector:
    """The photo detector a config describes (infer.py / evaluate.py)."""
    return blazeface_detector(weights=blazeface_weights(cfg["model"]), variant=cfg["model"]["variant"],
                              device=device, **cfg["inference"])


# Score calibration of the fused detectors learns from misses too: thresholds low enough to make some.
CALIBRATION_SET = ("inference.score_threshold=0.05",)
