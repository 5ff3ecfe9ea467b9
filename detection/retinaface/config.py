"""RetinaFace's config schema and defaults (``configs/detection_retinaface.yaml`` overrides them) and the photo
detector a config describes."""
from __future__ import annotations

from common.config import required_path
from detection.data.dataset import DEFAULT_AUGMENTATION
from detection.photo_detector import ConvolutionalPhotoDetector
from detection.retinaface.detector import retinaface_detector

DEFAULT_WEIGHTS = "../shared/models/retinaface/mobilenet0.25_Final.pth"

RETINAFACE_DEFAULTS = {
    "stage": "detection",
    "detector": "retinaface",
    # flavor: "1mb" (anchors 10/20, 32/64, 128/256 px, ReLU: the shared mobilenet0.25_Final.pth) or "retinaface"
    # (16/32, 64/128, 256/512, LeakyReLU: Pytorch_Retinaface's releases). backbone_weights: ImageNet weights of
    # the backbone (local file) when training from scratch.
    "model": {"backbone": "mobilenet0.25", "flavor": "1mb", "pretrained": True, "weights": DEFAULT_WEIGHTS,
              "backbone_weights": None},
    "data": {"format": "auto", "train": None, "val": None, "root": None, "val_fraction": 0.2, "split_seed": 42,
             "augment": True, "augmentation": dict(DEFAULT_AUGMENTATION)},
    "loss": {"hard_negative_ratio": 3.0, "box_weight": 2.0, "landmark_weight": 1.0, "use_focal_loss": False,
             "focal_alpha": 0.25, "focal_gamma": 2.0, "box_loss": "smooth_l1", "positive_iou": 0.35,
             "negative_iou": 0.35},
    "train": {"input_size": 640, "epochs": 100, "batch_size": 16, "lr": 1e-3, "weight_decay": 5e-4,
              "grad_clip": 10.0, "num_workers": 4, "device": "auto", "seed": 0, "amp": True,
              "checkpoint_every": 10},
    "eval": {"score_threshold": 0.02, "nms_iou": 0.4},
    "inference": {"score_threshold": 0.9, "nms_iou": 0.4, "long_side": 640, "min_face_px": None,
                  "face_px": [16, 256], "max_input_side": 2048},
    "output": {"checkpoint_dir": "runs/retinaface/checkpoints", "log_dir": "runs/retinaface/logs", "resume": None,
               "auto_resume": True},
}


def resolve_weights(weights: str | None) -> str | None:
    """``existing_path`` of the weights, which must exist."""
    return required_path(weights, "RetinaFace weights", "Put the public mobilenet0.25_Final.pth there, set "
                         "model.weights / --weights, or train one.")


def retinaface_from_config(cfg: dict, device: str) -> ConvolutionalPhotoDetector:
    """The photo detector a config describes (infer.py / evaluate.py)."""
    model = cfg["model"]
    return retinaface_detector(weights=resolve_weights(model["weights"]), backbone=model["backbone"],
                               flavor=model["flavor"], device=device, **cfg["inference"])


CALIBRATION_SET = ("inference.score_threshold=0.05",)
