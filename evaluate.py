#!/usr/bin/env python
"""Benchmarks. Every benchmark prints its figures and, with ``--out``, writes them all to a JSON file.

    python evaluate.py --benchmark detection --detector blazeface \\
        --data ../shared/data/detection/dlib_faces/testing.xml --out results.json --plot pr.png
    python evaluate.py --benchmark lfw --embedder dlib_resnet --detector mtcnn --out runs/lfw.json
    python evaluate.py --benchmark pairs --pairs my_pairs.csv --images photos/ --embedder facenet
    python evaluate.py --benchmark wider --predictions runs/wider_val [--images WIDER_val/images --detector retinaface]

lfw/pairs: 10-fold protocol (fit the threshold or classifier on 9 folds, test on the 10th); the JSON holds
accuracy_mean, accuracy_std, tar_at_far_1e-3, auc, n_pairs, n_no_face and per-fold figures, the ROC PNG lies
next to it. Embeddings are cached (--cache-dir), so reruns only redo the protocol.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from common.cli import run_cli
from common.metrics import plot_precision_recall

BENCHMARKS = ("detection", "lfw", "pairs", "wider")
DEFAULT_DETECTOR = {"detection": "blazeface", "lfw": "mtcnn", "pairs": "mtcnn", "wider": "retinaface"}
WIDER_DETECTOR_FLAGS = ("config", "tile_zooms")  # detection flags that also shape the detector --benchmark wider runs


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--benchmark", required=True, choices=BENCHMARKS)
    parser.add_argument("--detector", choices=["blazeface", "mtcnn", "retinaface", "yolo", "fusion"],
                        help="default: blazeface for detection, mtcnn for lfw/pairs")
    parser.add_argument("--config", help="detector config (default: configs/detection_<detector>.yaml)")
    parser.add_argument("--weights", help="weights to evaluate: the detector's (detection; default: model.weights "
                                          "of the config) or the embedder's (lfw/pairs)")
    parser.add_argument("--data",
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
    parser.add_argument("--plot", help="precision-recall (detection) or ROC (lfw/pairs) PNG (default: next to --out)")
    verification = parser.add_argument_group("verification (lfw, pairs)")
    verification.add_argument("--embedder", default="dlib_resnet", help="registered embedder name")
    verification.add_argument("--lfw-root", help="LFW folder with pairs.txt and deepfunneled/ or lfw/ "
                                                 "(default: ../shared/data/lfw next to the project)")
    verification.add_argument("--pairs", help="pairs: CSV with header file_x,file_y,same (1/0, Yes/No, true/false)")
    verification.add_argument("--images", help="pairs: folder the CSV's files are relative to (default: its folder); "
                                               "wider: WIDER_val/images, detected first into --predictions")
    verification.add_argument("--verifier", default="threshold", choices=["threshold", "classifier"],
                              help="threshold on --metric, or a classifier on pair features, fitted per fold")
    verification.add_argument("--classifier", default="logistic", choices=["logistic", "mlp"])
    verification.add_argument("--metric", default="cosine", choices=["cosine", "l2"])
    verification.add_argument("--jitter", type=int, default=0,
                              help="embed N randomly jittered copies of each face and average (dlib; 0: none)")
    verification.add_argument("--flip", action="store_true",
                              help="test-time flip: embed each face and its mirror image, and average")
    verification.add_argument("--align", choices=["dlib_landmarks", "template"],
                              help="dlib_resnet only: cut chips from dlib's own 5-point landmarker seeded by the "
                                   "detector's points (default), or align the detector's points to a template")
    verification.add_argument("--folds", type=int, nargs="+", metavar="K", help="test folds, 1-10 (default: all)")
    verification.add_argument("--cache-dir", help="embedding cache (default: ~/.cache/facepipe/embeddings)")
    verification.add_argument("--limit", type=int, metavar="N",
                              help="only N pairs of each fold (its first N/2 same and N/2 different pairs): a "
                                   "quick check, not the protocol")
    wider = parser.add_argument_group("wider (WIDER FACE val, scored as the official evaluation)")
    wider.add_argument("--predictions", help="prediction folder <event>/<image>.txt (written first with --images)")
    wider.add_argument("--wider-gt", help="folder of wider_face_val.mat and wider_{easy,medium,hard}_val.mat "
                                          "(default: ../shared/data/detection/wider_val_ground_truth)")
    args = parser.parse_args(argv)
    args.detector = args.detector or DEFAULT_DETECTOR[args.benchmark]
    if args.benchmark == "wider" and not args.predictions:
        parser.error("--benchmark wider needs --predictions (the folder to score, or to write with --images)")
    if args.benchmark == "detection" and not args.data:
        parser.error("--benchmark detection needs --data")
    detection_only = [flag for flag in ("config", "data", "data_root", "format", "tile_zooms")
                      if getattr(args, flag) is not None
                      and not (args.benchmark == "wider" and flag in WIDER_DETECTOR_FLAGS)]
    if args.align and args.embedder != "dlib_resnet":
        parser.error(f"--align applies to --embedder dlib_resnet only (not {args.embedder})")
    if args.benchmark != "detection" and detection_only:
        parser.error(f"{', '.join('--' + flag.replace('_', '-') for flag in detection_only)} apply to "
                     "--benchmark detection only")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.benchmark == "wider":
        from detection.wider_eval import run_wider_benchmark
        run_wider_benchmark(args)
        return 0
    if args.benchmark in ("lfw", "pairs"):
        from matching.benchmark import run_verification_benchmark
        run_verification_benchmark(args)
        return 0
    from detection.evaluation import evaluate_detector, load_benchmark
    from detection.training import default_config_path, detection_config, detector_from_config

    # AP needs the low-scoring detections too: --score-threshold replaces the config's inference threshold.
    cfg = detection_config(args.detector, args.config or default_config_path(args.detector),
                           {"model.weights": args.weights, "inference.tile_zooms": args.tile_zooms,
                            "inference.score_threshold": args.score_threshold})
    operating_threshold = detection_config(args.detector, args.config or default_config_path(args.detector)
                                           )["inference"]["score_threshold"]
    detector = detector_from_config(cfg, args.device)
    items = load_benchmark(args.data, args.data_root, args.format)
    curve = evaluate_detector(detector, items, args.iou)
    precision, recall = curve.at_threshold(operating_threshold)
    matching = "nose point inside box" if items and "gt_points" in items[0] else f"IoU>={args.iou}"
    results = {"benchmark": "detection", "detector": args.detector, "weights": str(cfg.get("model", {}).get("weights")),
               "data": str(args.data), "images": len(items), "faces": curve.num_ground_truth,
               "detections": curve.num_detections, "inference": cfg["inference"], "matching": matching, "ap50": round(curve.ap, 4),
               "max_recall": round(float(curve.recall[-1]) if len(curve.recall) else 0.0, 4),
               "operating_point": {"score_threshold": operating_threshold, "precision": round(precision, 4),
                                   "recall": round(recall, 4)}}
    print(f"AP@0.5 = {curve.ap:.4f}  ({curve.num_ground_truth} faces in {len(items)} images, {matching}, "
          f"max recall {results['max_recall']:.3f})")
    print(f"at the config's score threshold {operating_threshold}: precision {precision:.3f}, recall {recall:.3f}")
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
