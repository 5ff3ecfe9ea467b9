"""YuNet's config schema and defaults (``configs/detection_yunet.yaml`` overrides them) and the photo detector a
config describes."""
from __future__ import annotations

from common.config import required_path
from detection.data.dataset import DEFAULT_AUGMENTATION
from detection.photo_detector import ConvolutionalPhotoDetector
from detection.yunet.detector import yunet_detector

NAME = "yunet"
DEFAULT_WEIGHTS = "../shared/models/yunet/yunet_n.pth"

YUNET_DEFAULTS = {
    "stage": "detection",
    "detector": NAME,
    "model": {"name": "yunet_n", "pretrained": True, "weights": DEFAULT_WEIGHTS},
    "data": {"format": "auto", "train": None, "val": None, "root": None, "val_fraction": 0.2, "split_seed": 42,
             "augment": True, "augmentation": dict(DEFAULT_AUGMENTATION)},
    "loss": {"box_weight": 5.0, "cls_weight": 1.0, "obj_weight": 1.0, "landmark_weight": 0.1,
             "center_radius": 2.5, "candidate_topk": 10, "iou_weight": 3.0},
    "train": {"input_size": 640, "epochs": 100, "batch_size": 16, "lr": 1e-3, "weight_decay": 5e-4,
              "grad_clip": 10.0, "num_workers": 2, "device": "auto", "seed": 0, "amp": True,
              "checkpoint_every": 10},
    "eval": {"score_threshold": 0.02, "nms_iou": 0.45},
    "inference": {"score_threshold": 0.9, "nms_iou": 0.3, "long_side": 640, "min_face_px": None,
                  "face_px": [20, 448], "max_input_side": 2048},
    "output": {"checkpoint_dir": "runs/yunet/checkpoints", "log_dir": "runs/yunet/logs", "resume": None,
               "auto_resume": True},
}


def resolve_weights(weights: str | None) -> str | None:
    """``existing_path`` of the weights, which must exist."""
    return required_path(weights, "YuNet weights", "Put libfacedetection.train's yunet_n.pth there, set "
                         "model.weights / --weights, or train one.")


def yunet_from_config(cfg: dict, device: str) -> ConvolutionalPhotoDetector:
    """The photo detector a config describes (infer.py / evaluate.py)."""
    return yunet_detector(weights=resolve_weights(cfg["model"]["weights"]), model=cfg["model"]["name"],
                          device=device, **cfg["inference"])


# Score calibration of the fused detectors learns from misses too: thresholds low enough to make some.
CALIBRATION_SET = ("inference.score_threshold=0.05",)
