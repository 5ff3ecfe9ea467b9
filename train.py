#!/usr/bin/env python
"""Train a stage of the pipeline from a YAML config; flags and ``--set key=value`` override the file.

    python train.py --stage detection --config configs/detection_blazeface.yaml
    python train.py --stage detection --config configs/detection_mtcnn.yaml --mtcnn-stage onet
    python train.py --stage detection --detector yolo --pseudo-labels fusion --images photos/   # teacher → student
    torchrun --nproc_per_node 2 train.py --stage detection --config configs/detection_blazeface.yaml
    python train.py --stage embedding --config configs/embedding_mobilefacenet.yaml
    python train.py --stage matching --config configs/matching.yaml
    python train.py --stage all --config configs/pipeline.yaml      # detection → embedding → matching, resumable
"""
from __future__ import annotations

import argparse
import sys

from common.cli import run_cli
from common.config import ConfigError

STAGES = ("detection", "embedding", "matching", "all")


def parse_args(argv):
    from detection.training import add_detection_flags
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", required=True, choices=STAGES)
    parser.add_argument("--config", help="YAML file in configs/ (default: the stage's defaults)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config key, e.g. --set train.lr=3e-4 (repeatable)")
    add_detection_flags(parser)
    return parser.parse_args(argv)


# Detection flags with no meaning for --stage embedding.
EMBEDDING_IGNORED_FLAGS = ("detector", "variant", "mtcnn_stage", "csv_format", "train_data", "val_data", "pretrained",
                           "use_focal_loss", "focal_alpha", "focal_gamma", "detection_weight", "classification_weight",
                           "hard_negative_ratio", "pseudo_labels", "images")


def train_embedding(args) -> int:
    from common.config import build_config
    from embedding.training import EMBEDDING_DEFAULTS, run_embedding_training
    detection_only = [flag for flag in EMBEDDING_IGNORED_FLAGS if getattr(args, flag, None) not in (None, False)]
    if detection_only:
        raise ConfigError(f"{', '.join('--' + f.replace('_', '-') for f in detection_only)} apply to "
                          "--stage detection only (set embedding keys in the YAML or with --set)")
    overrides = {"data.root": args.data_root, "model.weights": args.weights, "train.batch_size": args.batch_size,
                 "train.epochs": args.epochs, "train.lr": args.lr, "train.weight_decay": args.weight_decay,
                 "train.device": args.device, "train.num_workers": args.num_workers,
                 "output.checkpoint_dir": args.checkpoint_dir, "output.log_dir": args.log_dir,
                 "output.resume": args.resume, "output.auto_resume": False if args.no_auto_resume else None}
    cfg = build_config(EMBEDDING_DEFAULTS, args.config, overrides, args.set)
    if cfg["stage"] != "embedding":
        raise ConfigError(f"{args.config}: stage is {cfg['stage']!r} but --stage embedding was given")
    run_embedding_training(cfg)
    return 0


def is_pipeline_config(path) -> bool:
    """configs/pipeline.yaml and its copies: stage ``all``."""
    from common.config import load_yaml
    return path is not None and load_yaml(path).get("stage") == "all"


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.stage == "all" or is_pipeline_config(args.config):
        from common.pipeline import ROOT, STAGES, pipeline_config, run_pipeline_training
        cfg = pipeline_config(args.config or ROOT / "configs" / "pipeline.yaml", args.set)
        run_pipeline_training(cfg, STAGES if args.stage == "all" else (args.stage,), force=args.stage != "all")
        return 0
    if args.stage == "embedding":
        return train_embedding(args)
    if args.stage == "matching":
        from matching.training import matching_config_from_args, run_matching_training
        run_matching_training(matching_config_from_args(args))
        return 0
    if args.stage != "detection":
        raise ConfigError(f"stage {args.stage!r} is not implemented yet; available: detection, embedding, matching")
    from detection.training import default_config_path, detection_config, run_detection_training
    # --detector without --config: that detector's configs/detection_<name>.yaml
    config = args.config or (default_config_path(args.detector) if args.detector else None)
    cfg = detection_config(args.detector, config, set_items=args.set, args=args)
    if cfg["stage"] != "detection":
        raise ConfigError(f"{args.config}: stage is {cfg['stage']!r} but --stage detection was given")
    run_detection_training(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
