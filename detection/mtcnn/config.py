"""MTCNN's config schema and defaults (``configs/detection_mtcnn.yaml`` overrides them) and the photo detector a
config describes."""
from __future__ import annotations

from detection.mtcnn.detector import DEFAULT_THRESHOLDS, PYRAMID_FACTOR, MTCNNDetector, mtcnn_detector
from detection.mtcnn.loss import PAPER_TASK_WEIGHTS
from detection.mtcnn.targets import AUGMENTATION_DEFAULTS, SAMPLING_DEFAULTS


def _stage_defaults(stage: str) -> dict:
    # epochs / lr: null = train.epochs / train.lr
    return {"epochs": None, "lr": None, "task_weights": dict(PAPER_TASK_WEIGHTS[stage])}


MAX_SIDE = 2048  # inference: longer side (px) large photos are shrunk to before the pyramid

MTCNN_DEFAULTS = {
    "stage": "detection",
    "detector": "mtcnn",
    # pretrained: start from facenet-pytorch's weights; weights: a mtcnn.pth of ours (or one net's checkpoint)
    "model": {"pretrained": False, "weights": None},
    "mtcnn": {
        "stage": "all",  # pnet | rnet | onet | all (the three in order)
        "sampling": dict(SAMPLING_DEFAULTS),
        "hard_samples": True,  # R-Net / O-Net also learn from the earlier stages' proposals
        "ohem_keep": 0.7,  # face/non-face loss keeps this fraction of the hardest samples of a batch
        "box_loss": "mse",  # mse (the paper's squared Euclidean) | smooth_l1
        "pnet": _stage_defaults("pnet"),
        "rnet": _stage_defaults("rnet"),
        "onet": _stage_defaults("onet"),
        # the cascade that proposes hard samples: smallest face (px), face probability to pass P-Net, R-Net, O-Net
        "mining": {"min_face": 20.0, "thresholds": list(DEFAULT_THRESHOLDS), "factor": PYRAMID_FACTOR},
        # validation: AP@0.5 of the whole cascade on the validation photos after each epoch of these stages
        "eval": {"cascade_ap_stages": ["onet"], "min_face": 20.0, "thresholds": list(DEFAULT_THRESHOLDS),
                 "factor": PYRAMID_FACTOR},
    },
    "data": {"format": "auto", "train": None, "val": None, "root": None, "val_fraction": 0.2, "split_seed": 42,
             "augment": True, "augmentation": dict(AUGMENTATION_DEFAULTS)},
    "train": {"epochs": 30, "batch_size": 128, "lr": 1e-3, "weight_decay": 1e-4, "grad_clip": 10.0,
              "num_workers": 2, "device": "auto", "seed": 0, "amp": True, "checkpoint_every": 10},
    "output": {"checkpoint_dir": "runs/mtcnn/checkpoints", "log_dir": "runs/mtcnn/logs", "resume": None,
               "auto_resume": True},
    # infer.py / evaluate.py: the detector's arguments (detection/mtcnn/detector.py). score_threshold filters on top
    # of thresholds[2] (0 = no further filter); max_side / min_face_fraction (null = off) shrink large photos first:
    # MAX_SIDE leaves photos up to 2048 px (1080p, 1440p) as they are and bounds the work on 12-36 MP portraits.
    "inference": {"score_threshold": 0.0, "min_face_px": 20.0, "thresholds": list(DEFAULT_THRESHOLDS),
                  "factor": PYRAMID_FACTOR, "max_side": MAX_SIDE, "min_face_fraction": None, "batch_size": 16},
}


def mtcnn_from_config(cfg: dict, device: str) -> MTCNNDetector:
    """The photo detector a config describes (infer.py / evaluate.py): ``model.weights`` (a ``mtcnn.pth``) or,
    without it, facenet-pytorch's weights, with the ``inference`` settings."""
    return mtcnn_detector(weights=cfg["model"]["weights"], device=device, **cfg["inference"])


# Score calibration of the fused detectors learns from misses too: an O-Net threshold low enough to make some.
CALIBRATION_SET = ("inference.thresholds=[0.6, 0.7, 0.1]",)
