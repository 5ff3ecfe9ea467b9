"""``train.py``'s flags: which config key each sets, for each stage, and a clear refusal of a flag the chosen stage
does not use (rather than ignoring it)."""
from __future__ import annotations

import argparse

from common.config import ConfigError
from pipeline.build import list_detectors

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
# --stage embedding: flag → embedding config key
EMBEDDING_FLAG_KEYS = {
    "data_root": "data.root", "weights": "model.weights", "batch_size": "train.batch_size", "epochs": "train.epochs",
    "lr": "train.lr", "weight_decay": "train.weight_decay", "device": "train.device",
    "num_workers": "train.num_workers", "checkpoint_dir": "output.checkpoint_dir", "log_dir": "output.log_dir",
    "resume": "output.resume",
}
# --stage matching: flag → matching config key
MATCHING_FLAG_KEYS = {"device": "embedder.device", "detector": "detector"}
# --stage all (or a pipeline config): flag → pipeline config key; the ``train`` section reaches every stage
PIPELINE_FLAG_KEYS = {
    "device": "train.device", "epochs": "train.epochs", "batch_size": "train.batch_size", "lr": "train.lr",
    "weight_decay": "train.weight_decay", "num_workers": "train.num_workers", "log_dir": "train.log_dir",
    "resume": "train.resume", "checkpoint_dir": "output.run_dir",
}
TRAIN_PY_OWN = ("stage", "config", "set")


def add_detection_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("training (each flag overrides its key in the YAML config)")
    group.add_argument("--detector", choices=list_detectors(), help="detector to train (default: the config's)")
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
    group.add_argument("--checkpoint-dir", help="where checkpoints go (--stage all: the run folder, output.run_dir)")
    group.add_argument("--log-dir", help="TensorBoard folder")
    group.add_argument("--resume", help="checkpoint to resume from")
    group.add_argument("--no-auto-resume", action="store_true", help="start fresh even if a checkpoint exists")


def _given(args: argparse.Namespace) -> list[str]:
    """The flags set on the command line (besides --stage, --config and --set)."""
    return [name for name, value in vars(args).items() if name not in TRAIN_PY_OWN and value not in (None, False)]


def refuse_flags(flags, what: str, hint: str) -> None:
    if flags:
        raise ConfigError(f"{', '.join('--' + flag.replace('_', '-') for flag in flags)} do not apply to {what} "
                          f"({hint})")


def detection_overrides(args: argparse.Namespace, detector: str) -> dict:
    """``train.py --stage detection``'s flags as config keys of ``detector``; another detector's flag is refused."""
    overrides = {key: getattr(args, flag, None) for flag, key in SHARED_FLAG_KEYS.items()}
    overrides["data.format"] = "csv" if getattr(args, "csv_format", False) else None
    overrides["model.pretrained"] = getattr(args, "pretrained", None)
    overrides["output.auto_resume"] = False if getattr(args, "no_auto_resume", False) else None
    for flag, (owner, key) in DETECTOR_FLAG_KEYS.items():
        value = getattr(args, flag, None)
        if value is not None and owner != detector:
            raise ConfigError(f"--{flag.replace('_', '-')} applies to {owner} only, not {detector}")
        overrides[key] = value
    return overrides


def embedding_overrides(args: argparse.Namespace) -> dict:
    """``train.py --stage embedding``'s flags as embedding config keys; detection-only flags are refused."""
    refuse_flags([flag for flag in _given(args) if flag not in EMBEDDING_FLAG_KEYS and flag != "no_auto_resume"],
                 "--stage embedding", "set embedding keys in the YAML or with --set")
    overrides = {key: getattr(args, flag) for flag, key in EMBEDDING_FLAG_KEYS.items()}
    overrides["output.auto_resume"] = False if args.no_auto_resume else None
    return overrides


def matching_overrides(args: argparse.Namespace) -> dict:
    """``train.py --stage matching``'s flags (--device, --detector) as matching config keys; others are refused."""
    refuse_flags([flag for flag in _given(args) if flag not in MATCHING_FLAG_KEYS], "--stage matching",
                 "set matching keys in the YAML or with --set, e.g. --set embedder.name=facenet")
    return {key: getattr(args, flag) for flag, key in MATCHING_FLAG_KEYS.items()}


def pipeline_overrides(args: argparse.Namespace) -> dict:
    """``train.py --stage all`` (or any stage with a pipeline config): the training flags every stage shares, as
    pipeline config keys (its ``train`` section and the run folder); flags of one detector are refused."""
    refuse_flags([flag for flag in _given(args)
                  if flag not in PIPELINE_FLAG_KEYS and flag not in ("no_auto_resume", "detector")],
                 "a pipeline config (--stage all)", "each stage's own config takes them: detection.<name>.config, "
                 "embedding.train_config, matching.train_config; or use --set")
    if args.detector not in (None, "fusion"):
        raise ConfigError(f"--detector {args.detector} does not apply to a pipeline config, whose detectors are "
                          "detection.detectors (fused); pass the detector's own config instead")
    overrides = {key: getattr(args, flag) for flag, key in PIPELINE_FLAG_KEYS.items()}
    overrides["train.auto_resume"] = False if args.no_auto_resume else None
    return overrides
