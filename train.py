#!/usr/bin/env python
"""Train a stage of the pipeline from a YAML config; flags and ``--set key=value`` override the file.

    python train.py --stage detection --config configs/detection_blazeface.yaml
    python train.py --stage detection --config configs/detection_mtcnn.yaml --mtcnn-stage onet
    torchrun --nproc_per_node 2 train.py --stage detection --config configs/detection_blazeface.yaml
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


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.stage != "detection":
        raise ConfigError(f"stage {args.stage!r} is not implemented yet; available: detection")
    from detection.training import detection_config, run_detection_training
    cfg = detection_config(args.detector, args.config, set_items=args.set, args=args)
    if cfg["stage"] != "detection":
        raise ConfigError(f"{args.config}: stage is {cfg['stage']!r} but --stage detection was given")
    run_detection_training(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
