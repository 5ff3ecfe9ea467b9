#!/usr/bin/env python
"""Benchmarks. Every benchmark prints its figures and, with ``--out``, writes them all to a JSON file.

    python evaluate.py --benchmark detection --detector blazeface \\
        --data ../shared/data/detection/dlib_faces/testing.xml --out results.json --plot pr.png
    python evaluate.py --benchmark lfw --embedder dlib_resnet --detector mtcnn --out runs/lfw.json
    python evaluate.py --benchmark lfw --embedder sface --probe-face-px 24     # one photo of each pair: a 24-px face
    python evaluate.py --benchmark pairs --pairs my_pairs.csv --images photos/ --embedder facenet
    python evaluate.py --benchmark detection --detector fusion --data groups --split tune  # per face size
    python evaluate.py --benchmark wider --predictions runs/wider_val [--images WIDER_val/images --detector retinaface]

lfw/pairs: 10-fold protocol (fit the threshold or classifier on 9 folds, test on the 10th); the JSON holds
accuracy_mean, accuracy_std, tar_at_far_1e-3, auc, n_pairs, n_no_face and per-fold figures, the ROC PNG lies
next to it. Embeddings are cached (--cache-dir), so reruns only redo the protocol.
"""
from __future__ import annotations

import argparse
import sys

from classroom.benchmark import run_classroom_benchmark
from classroom.service import attendance_config, default_attendance_config
from common.cli import MIN_FACE_PX_HELP, min_face_px_arg, run_cli
from pipeline.benchmarks import AP_SCORE_THRESHOLD, run_detection_benchmark, run_wider_benchmark
from pipeline.build import list_detectors
from pipeline.verification import csv_pairs, lfw_pairs, run_verification_benchmark

BENCHMARKS = ("detection", "lfw", "pairs", "wider", "classroom")
DEFAULT_DETECTOR = {"detection": "blazeface", "lfw": "mtcnn", "pairs": "mtcnn", "wider": "retinaface"}
DETECTION = ("detection", "wider")
# Every flag that only some benchmarks use → those benchmarks; given to another benchmark it is refused.
FLAG_BENCHMARKS = {
    "config": (*DETECTION, "classroom"), "min_face_px": DETECTION, "set": DETECTION, "score_threshold": DETECTION,
    "iou": DETECTION,
    "data": ("detection",), "data_root": ("detection",), "format": ("detection",),
    "embedder": ("lfw", "pairs"), "verifier": ("lfw", "pairs"), "classifier": ("lfw", "pairs"),
    "metric": ("lfw", "pairs"), "jitter": ("lfw", "pairs"), "flip": ("lfw", "pairs"), "align": ("lfw", "pairs"),
    "folds": ("lfw", "pairs"), "cache_dir": ("lfw", "pairs"), "limit": ("lfw", "pairs"),
    "probe_face_px": ("lfw", "pairs"),
    "lfw_root": ("lfw",), "pairs": ("pairs",), "images": ("pairs", "wider"),
    "predictions": ("wider",), "wider_gt": ("wider",),
    "classes": ("classroom",), "split": ("classroom", "detection"), "reference": ("classroom",),
}
# --benchmark wider: the flags of the detector that writes the predictions, used only with --images
WIDER_DETECTING_FLAGS = ("detector", "config", "weights", "min_face_px", "set", "score_threshold", "device")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--benchmark", required=True, choices=BENCHMARKS)
    parser.add_argument("--detector", choices=list_detectors(),
                        help="default: blazeface for detection, mtcnn for lfw/pairs")
    parser.add_argument("--config", help="detector config (default: configs/detection_<detector>.yaml); classroom: "
                                         "the attendance config (default: configs/attendance.yaml)")
    parser.add_argument("--weights", help="weights to evaluate: the detector's (detection; default: model.weights "
                                          "of the config) or the embedder's (lfw/pairs)")
    parser.add_argument("--data",
                        help="annotations: dlib xml, seed CSV, WIDER txt, label.txt, COCO json, a CompreFace "
                             "annotations.json with nose points, or 'groups': generated group photos of 20-60 faces "
                             "16-120 px wide (configs/benchmark_groups.yaml), scored per face size")
    parser.add_argument("--data-root", help="folder that relative image paths start from")
    parser.add_argument("--format", default=None, choices=["csv", "wider", "retinaface", "coco", "dlib"])
    parser.add_argument("--device", help="cpu (default), cuda or cuda:N")
    parser.add_argument("--min-face-px", type=min_face_px_arg, metavar="PX", help=MIN_FACE_PX_HELP)
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="detection/wider: override a key of the detector config, e.g. model.variant=full")
    parser.add_argument("--score-threshold", type=float,
                        help="detection/wider: keep detections scoring at least this for AP (default: 0.05)")
    parser.add_argument("--iou", type=float, help="detection/wider: IoU a detection needs to count as a hit "
                                                  "(default: 0.5)")
    parser.add_argument("--out", help="write every figure to this JSON file")
    parser.add_argument("--plot", help="precision-recall (detection, wider) or ROC (lfw/pairs) PNG (default: next to "
                                          "--out; wider: none)")
    verification = parser.add_argument_group("verification (lfw, pairs)")
    verification.add_argument("--embedder", help="registered embedder name (default: dlib_resnet)")
    verification.add_argument("--lfw-root", help="LFW folder with pairs.txt and deepfunneled/ or lfw/ "
                                                 "(default: ../shared/data/lfw next to the project)")
    verification.add_argument("--pairs", help="pairs: CSV with header file_x,file_y,<label> (the label column under "
                              "any name, e.g. same or deepface's Decision: 1/0, Yes/No, true/false)")
    verification.add_argument("--images", help="pairs: folder the CSV's files are relative to (default: its folder); "
                                               "wider: WIDER_val/images, detected first into --predictions")
    verification.add_argument("--verifier", choices=["threshold", "classifier"],
                              help="threshold on --metric (default), or a classifier on pair features, fitted per "
                                   "fold")
    verification.add_argument("--classifier", choices=["logistic", "mlp"], help="default: logistic")
    verification.add_argument("--metric", choices=["cosine", "l2"], help="default: cosine")
    verification.add_argument("--jitter", type=int,
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
    verification.add_argument("--probe-face-px", type=int, metavar="N",
                              help="cross-resolution: shrink the second photo of every pair so its face is N px "
                                   "wide (area resampling, back to size, JPEG 90), as a face at the back of a class "
                                   "photo; the protocol is unchanged")
    wider = parser.add_argument_group("wider (WIDER FACE val, scored as the official evaluation)")
    wider.add_argument("--predictions", help="prediction folder <event>/<image>.txt (written first with --images)")
    wider.add_argument("--wider-gt", help="folder of wider_face_val.mat and wider_{easy,medium,hard}_val.mat "
                                          "(default: ../shared/data/detection/wider_val_ground_truth)")
    classroom = parser.add_argument_group("classroom (attendance on generated class photos; settings: the "
                                          "attendance config's benchmark section)")
    classroom.add_argument("--classes", type=int, help="classes to generate (default: benchmark.classes)")
    classroom.add_argument("--split", choices=["tune", "report"],
                           help="classroom and detection --data groups: report: people of LFW fold 10 (default); "
                                "tune: folds 1-9, other seeds")
    classroom.add_argument("--reference", choices=["face_recognition"],
                           help="also score face_recognition's recipe on the same photos")
    args = parser.parse_args(argv)
    if args.benchmark == "classroom":
        unused = [flag for flag in ("detector", "weights", "device") if getattr(args, flag) is not None]
        if unused:
            parser.error(f"{', '.join('--' + flag for flag in unused)}: the classroom benchmark runs the attendance "
                         "config's pipeline and device; set them there (--config)")
    if args.benchmark == "wider" and not args.images:
        unused = [flag for flag in WIDER_DETECTING_FLAGS if getattr(args, flag) is not None]
        if unused:
            parser.error(f"{', '.join('--' + flag.replace('_', '-') for flag in unused)} shape the detector that "
                         "writes --predictions and apply to --benchmark wider only with --images")
    args.detector = args.detector or DEFAULT_DETECTOR.get(args.benchmark)
    misplaced = [flag for flag, benchmarks in FLAG_BENCHMARKS.items()
                 if getattr(args, flag) not in (None, False) and args.benchmark not in benchmarks]
    if misplaced:
        parser.error("; ".join(f"--{flag.replace('_', '-')} applies to --benchmark "
                               f"{'/'.join(FLAG_BENCHMARKS[flag])} only" for flag in misplaced))
    if args.benchmark == "wider" and not args.predictions:
        parser.error("--benchmark wider needs --predictions (the folder to score, or to write with --images)")
    if args.benchmark == "detection" and not args.data:
        parser.error("--benchmark detection needs --data")
    if args.align and (args.embedder or "dlib_resnet") != "dlib_resnet":
        parser.error(f"--align applies to --embedder dlib_resnet only (not {args.embedder})")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.benchmark == "classroom":
        cfg = attendance_config(args.config or default_attendance_config())
        run_classroom_benchmark(cfg, args.split, args.classes, args.reference, args.out, args.plot)
        return 0
    shared = {"detector": args.detector, "weights": args.weights, "device": args.device or "cpu", "out": args.out,
              "plot": args.plot}
    if args.benchmark in ("lfw", "pairs"):
        pairs, description = lfw_pairs(args.lfw_root) if args.benchmark == "lfw" else csv_pairs(args.pairs,
                                                                                                args.images)
        run_verification_benchmark(
            pairs, description, benchmark=args.benchmark, embedder=args.embedder or "dlib_resnet",
            verifier=args.verifier or "threshold", metric=args.metric or "cosine",
            classifier=args.classifier or "logistic", jitter=args.jitter or 0, flip=args.flip, align=args.align,
            folds=args.folds, limit=args.limit, probe_face_px=args.probe_face_px, cache_dir=args.cache_dir,
            **shared)
        return 0
    detection = {"config": args.config, "min_face_px": args.min_face_px, "set_items": args.set or [],
                 "iou": 0.5 if args.iou is None else args.iou,
                 "score_threshold": AP_SCORE_THRESHOLD if args.score_threshold is None else args.score_threshold}
    if args.benchmark == "wider":
        run_wider_benchmark(args.predictions, args.images, args.wider_gt, **detection, **shared)
        return 0
    run_detection_benchmark(args.data, data_root=args.data_root, fmt=args.format, split=args.split, **detection,
                            **shared)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
