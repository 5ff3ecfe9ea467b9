#!/usr/bin/env python
"""Benchmarks. Every benchmark prints its figures and, with ``--out``, writes them all to a JSON file.

    python evaluate.py --benchmark detection --detector blazeface \\
        --data ../shared/data/detection/dlib_faces/testing.xml --out results.json --plot pr.png
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from common.cli import run_cli
from common.metrics import plot_precision_recall

BENCHMARKS = ("detection",)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--benchmark", required=True, choices=BENCHMARKS)
    parser.add_argument("--detector", default="blazeface", choices=["blazeface", "mtcnn"])
    parser.add_argument("--config", help="detector config (default: configs/detection_<detector>.yaml)")
    parser.add_argument("--weights", help="weights to evaluate (default: model.weights of the config)")
    parser.add_argument("--data", required=True,
                        help="annotations: dlib xml, seed CSV, WIDER txt, label.txt, COCO json, or a CompreFace "
                             "annotations.json with nose points")
    parser.add_argument("--data-root", help="folder that relative image paths start from")
    parser.add_argument("--format", default=None, choices=["csv", "wider", "retinaface", "coco", "dlib"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tile-zooms", type=int, nargs="+", metavar="Z",
                        help="also run on overlapping tiles of 1/Z of the photo, for small faces "
                             "(default: inference.tile_zooms of the config, 1 2 4; 1 alone is fastest)")
    parser.add_argument("--score-threshold", type=float, default=0.05)
    parser.add_argument("--iou", type=float, default=0.5, help="IoU a detection needs to count as a hit")
    parser.add_argument("--out", help="write every figure to this JSON file")
    parser.add_argument("--plot", help="precision-recall PNG (default: next to --out, else pr_curve.png)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from detection.evaluation import evaluate_detector, load_benchmark
    from detection.training import default_config_path, detection_config, detector_from_config

    # AP needs the low-scoring detections too: --score-threshold replaces the config's inference threshold.
    cfg = detection_config(args.detector, args.config or default_config_path(args.detector),
                           {"model.weights": args.weights, "inference.tile_zooms": args.tile_zooms,
                            "inference.score_threshold": args.score_threshold})
    detector = detector_from_config(cfg, args.device)
    items = load_benchmark(args.data, args.data_root, args.format)
    curve = evaluate_detector(detector, items, args.iou)
    matching = "nose point inside box" if items and "gt_points" in items[0] else f"IoU>={args.iou}"
    results = {"benchmark": "detection", "detector": args.detector, "weights": str(cfg["model"]["weights"]),
               "data": str(args.data), "images": len(items), "faces": curve.num_ground_truth,
               "detections": curve.num_detections, "inference": cfg["inference"], "matching": matching, "ap50": round(curve.ap, 4),
               "max_recall": round(float(curve.recall[-1]) if len(curve.recall) else 0.0, 4)}
    print(f"AP@0.5 = {curve.ap:.4f}  ({curve.num_ground_truth} faces in {len(items)} images, {matching}, "
          f"max recall {results['max_recall']:.3f})")
    plot = Path(args.plot) if args.plot else (Path(args.out).with_suffix(".pr.png") if args.out else
                                                  Path("pr_curve.png"))
    plot.parent.mkdir(parents=True, exist_ok=True)
    plot_precision_recall({args.detector: curve}, plot, title=f"{Path(args.data).parent.name}/{Path(args.data).name}")
    results["plot"] = str(plot)
    print(f"precision-recall curve: {plot}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
