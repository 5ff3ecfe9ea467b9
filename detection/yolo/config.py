"""The YOLO face detector's config schema and defaults (``configs/detection_yolo.yaml`` overrides them) and the
photo detector a config describes."""
from __future__ import annotations

from common.config import existing_path
from detection.data.dataset import DEFAULT_AUGMENTATION
from detection.photo_detector import ConvolutionalPhotoDetector
from detection.yolo.detector import yolo_detector
from detection.yolo.mosaic import MOSAIC_DEFAULTS
from detection.yolo.pseudo_labels import PSEUDO_DEFAULTS

NAME = "yolo"

YOLO_DEFAULTS = {
    "stage": "detection",
    "detector": "yolo",
    # width/depth: channel and block-depth multipliers (0.25/0.33 ≈ YOLOX-nano); weights: a checkpoint to load for
    # inference, or to start training from with pretrained: true
    "model": {"width": 0.25, "depth": 0.33, "pretrained": False, "weights": "runs/yolo/checkpoints/yolo_best.pth"},
    # pseudo_labels: null = train on the annotation files (train/val); "fusion" = label the photos of ``images``
    # (folders or files) with the teacher of the ``pseudo`` section; max_images > 0 keeps a seeded subset
    "data": {"format": "auto", "train": None, "val": None, "root": None, "val_fraction": 0.1, "split_seed": 42,
             "augment": True, "augmentation": dict(DEFAULT_AUGMENTATION), "mosaic": dict(MOSAIC_DEFAULTS),
             "pseudo_labels": None, "images": [], "max_images": 0},
    "pseudo": dict(PSEUDO_DEFAULTS),
    "loss": {"box_weight": 5.0, "obj_weight": 1.0, "landmark_weight": 1.0, "center_radius": 2.5,
             "candidate_topk": 10, "iou_weight": 3.0},
    "train": {"input_size": 416, "epochs": 30, "batch_size": 16, "lr": 2e-3, "weight_decay": 5e-4,
              "warmup_epochs": 1, "min_lr_ratio": 0.05, "grad_clip": 10.0, "num_workers": 2, "device": "auto",
              "seed": 0, "amp": True, "checkpoint_every": 10},
    "eval": {"score_threshold": 0.02, "nms_iou": 0.45},
    "inference": {"score_threshold": 0.5, "nms_iou": 0.45, "long_side": 640},
    "output": {"checkpoint_dir": "runs/yolo/checkpoints", "log_dir": "runs/yolo/logs", "resume": None,
               "auto_resume": True},
}


def yolo_from_config(cfg: dict, device: str) -> ConvolutionalPhotoDetector:
    """The photo detector a config describes (infer.py / evaluate.py)."""
    model = cfg["model"]
    return yolo_detector(weights=existing_path(model["weights"]), width=model["width"], depth=model["depth"],
                         device=device, **cfg["inference"])


CALIBRATION_SET = ("inference.score_threshold=0.05",)
