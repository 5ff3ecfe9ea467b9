#!/usr/bin/env python
"""Train a stage of the pipeline from a YAML config; flags and ``--set key=value`` override the file.

    python train.py --stage detection --config configs/detection_blazeface.yaml
    python train.py --stage detection --config configs/detection_mtcnn.yaml --mtcnn-stage onet
    python train.py --stage detection --detector yolo --pseudo-labels fusion --images photos/   # teacher → student
    torchrun --nproc_per_node 2 train.py --stage detection --config configs/detection_blazeface.yaml
    python train.py --stage embedding --config configs/embedding_mobilefacenet.yaml
    python train.py --stage matching --config configs/matching.yaml
    python train.py --stage all --config configs/pipeline.yaml      # detection → embedding → matching, resumable

A flag the chosen stage does not use is refused with a message, never ignored. With a pipeline config
(``--stage all``) the training flags every stage shares (--device, --epochs, --batch-size, --lr, --weight-decay,
--num-workers, --log-dir, --resume, --no-auto-resume) reach each stage, and --checkpoint-dir is the run folder.
"""
from __future__ import annotations

import argparse
import sys

from common.cli import run_cli
from common.config import ConfigError, load_yaml
from pipeline.config import FUSION, PIPELINE_CONFIG, default_config_path, detection_config, is_pipeline_config, \
    pipeline_config
from pipeline.flags import (add_detection_flags, detection_overrides, embedding_overrides, matching_overrides,
                            pipeline_overrides)
from pipeline.matching_stage import matching_config, run_matching_training
from pipeline.training import STAGES as CHAIN, embedding_config, run_pipeline_training, train_detector, \
    train_embedder

STAGES = ("detection", "embedding", "matching", "all")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", required=True, choices=STAGES)
    parser.add_argument("--config", help="YAML file in configs/ (default: the stage's defaults)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config key, e.g. --set train.lr=3e-4 (repeatable)")
    add_detection_flags(parser)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.stage == "all" or is_pipeline_config(args.config) or args.detector == FUSION:
        cfg = pipeline_config(args.config or PIPELINE_CONFIG, args.set, pipeline_overrides(args))
        run_pipeline_training(cfg, CHAIN if args.stage == "all" else (args.stage,), force=args.stage != "all")
        return 0
    if args.stage == "embedding":
        train_embedder(embedding_config(args.config, args.set, embedding_overrides(args)))
        return 0
    if args.stage == "matching":
        run_matching_training(matching_config(args.config, args.set, matching_overrides(args)))
        return 0
    # --detector without --config: that detector's configs/detection_<name>.yaml
    config = args.config or (default_config_path(args.detector) if args.detector else None)
    detector = args.detector or (load_yaml(config).get("detector") if config else None) or "blazeface"
    cfg = detection_config(detector, config, detection_overrides(args, detector), args.set)
    if cfg["stage"] != "detection":
        raise ConfigError(f"{args.config}: stage is {cfg['stage']!r} but --stage detection was given")
    train_detector(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
