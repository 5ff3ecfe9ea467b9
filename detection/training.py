"""What ``train.py``, ``evaluate.py`` and ``infer.py`` share about detectors: flags, config schema per detector,
the training entry point and the photo detector a config describes."""
from __future__ import annotations

import argparse
import importlib
from pathlib import Path

from common.config import ConfigError, build_config, load_yaml
from common.engine import resolve_device

ROOT = Path(__file__).resolve().parents[1]

# detector name → (module, its config defaults, training entry, detector from config)
DETECTORS = {
    "blazeface": ("detection.blazeface.training", "BLAZEFACE_DEFAULTS", "run_blazeface_training",
                  "blazeface_from_config"),
    "mtcnn": ("detection.mtcnn.training", "MTCNN_DEFAULTS", "run_mtcnn_training", "mtcnn_from_config"),
    "retinaface": ("detection.retinaface.training", "RETINAFACE_DEFAULTS", "run_retinaface_training",
                   "retinaface_from_config"),
    "yolo": ("detection.yolo.training", "YOLO_DEFAULTS", "run_yolo_training", "yolo_from_config"),
    # several detectors merged; "training" fits each one's score calibration
    "fusion": ("common.pipeline", "PIPELINE_DEFAULTS", "fit_detection_stage", "detector_from_pipeline"),
}


def _part(detector: str, index: int):
    if detector not in DETECTORS:
        raise ConfigError(f"unknown detector {detector!r}; choose from {', '.join(sorted(DETECTORS))}")
    entry = DETECTORS[detector]
    return getattr(importlib.import_module(entry[0]), entry[index])


def default_config_path(detector: str) -> Path:
    return ROOT / "configs" / ("pipeline.yaml" if detector == "fusion" else f"detection_{detector}.yaml")


# Flags every trainable detector shares, each setting one config key.
SHARED_FLAG_KEYS = {
    "train_data": "data.train", "val_data": "data.val", "data_root": "data.root",
    "batch_size": "train.batch_size", "epochs": "train.epochs", "lr": "train.lr", "weight_decay": "train.weight_decay",
    "device": "train.device", "num_workers": "train.num_workers", "checkpoint_dir": "output.checkpoint_dir",
    "log_dir": "output.log_dir", "resume": "output.resume", "weights": "model.weights",
}
# Flags of one detector only: flag → (detector, config key).
DETECTOR_FLAG_KEYS = {
    "variant": ("blazeface", "model.variant"), "use_focal_loss": ("blazeface", "loss.use_focal_loss"),
    "focal_alpha": ("blazeface", "loss.focal_alpha"), "focal_gamma": ("blazeface", "loss.focal_gamma"),
    "detection_weight": ("blazeface", "loss.detection_weight"),
    "classification_weight": ("blazeface", "loss.classification_weight"),
    "hard_negative_ratio": ("blazeface", "loss.hard_negative_ratio"), "mtcnn_stage": ("mtcnn", "mtcnn.stage"),
    "pseudo_labels": ("yolo", "data.pseudo_labels"), "images": ("yolo", "data.images"),
}


def add_detection_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("detection (each flag overrides its key in the YAML config)")
    group.add_argument("--detector", choices=sorted(DETECTORS), help="detector to train (default: the config's)")
    group.add_argument("--variant", choices=["front", "back"], help="BlazeFace variant (model.variant)")
    group.add_argument("--mtcnn-stage", choices=["pnet", "rnet", "onet", "all"],
                       help="MTCNN net(s) to train (mtcnn.stage): pnet, rnet, onet, or all three in order")
    group.add_argument("--pseudo-labels", choices=["fusion"],
                       help="YOLO: train on --images labelled by the fused pretrained detectors (data.pseudo_labels)")
    group.add_argument("--images", nargs="+", metavar="DIR",
                       help="YOLO: unlabelled photos (folders or files) for --pseudo-labels (data.images)")
    group.add_argument("--csv-format", action="store_true", help="annotations are the seed CSV (data.format=csv)")
    group.add_argument("--train-data", help="training annotations: CSV, WIDER txt, label.txt, COCO json, dlib xml")
    group.add_argument("--val-data", help="validation annotations; without it 20%% of the images (seed 42)")
    group.add_argument("--data-root", help="folder that relative image paths start from")
    group.add_argument("--pretrained", action="store_true", default=None,
                       help="start from published weights (BlazeFace: MediaPipe .tflite; MTCNN: facenet-pytorch)")
    group.add_argument("--weights", help="weights to start from or to load (model.weights)")
    group.add_argument("--batch-size", type=int)
    group.add_argument("--epochs", type=int)
    group.add_argument("--lr", type=float)
    group.add_argument("--weight-decay", type=float)
    group.add_argument("--use-focal-loss", action="store_true", default=None,
                       help="BlazeFace: focal loss instead of BCE")
    group.add_argument("--focal-alpha", type=float)
    group.add_argument("--focal-gamma", type=float)
    group.add_argument("--detection-weight", type=float, help="weight of the box regression loss")
    group.add_argument("--classification-weight", type=float)
    group.add_argument("--hard-negative-ratio", type=float, help="mined negatives per positive anchor")
    group.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    group.add_argument("--num-workers", type=int)
    group.add_argument("--checkpoint-dir")
    group.add_argument("--log-dir", help="TensorBoard folder")
    group.add_argument("--resume", help="checkpoint to resume from")
    group.add_argument("--no-auto-resume", action="store_true", help="start fresh even if a checkpoint exists")


def detection_config(detector: str | None, config_path, flag_overrides: dict | None = None,
                     set_items=(), args: argparse.Namespace | None = None) -> dict:
    """The effective config of a detector: its defaults ← the YAML ← flags ← ``--set``. The detector is
    ``detector`` if given, else the YAML's ``detector`` key, else BlazeFace."""
    if detector is None:
        detector = (load_yaml(config_path).get("detector") if config_path else None) or "blazeface"
    overrides = {"detector": detector}
    if args is not None:
        overrides.update({key: getattr(args, flag, None) for flag, key in SHARED_FLAG_KEYS.items()})
        overrides["data.format"] = "csv" if getattr(args, "csv_format", False) else None
        overrides["model.pretrained"] = getattr(args, "pretrained", None)
        overrides["output.auto_resume"] = False if getattr(args, "no_auto_resume", False) else None
        for flag, (owner, key) in DETECTOR_FLAG_KEYS.items():
            value = getattr(args, flag, None)
            if value is not None and owner != detector:
                raise ConfigError(f"--{flag.replace('_', '-')} applies to {owner} only, not {detector}")
            overrides[key] = value
    overrides.update(flag_overrides or {})
    return build_config(_part(detector, 1), config_path, overrides, set_items)


def run_detection_training(cfg: dict):
    return _part(cfg["detector"], 2)(cfg)


def detector_from_config(cfg: dict, device: str):
    return _part(cfg["detector"], 3)(cfg, str(resolve_device(device)))
