"""Does fusing detectors help? AP@0.5 on dlib ``testing.xml``, nose-point AP / precision / recall on the CompreFace
photos, and time per photo, for each single detector and for each fusion setting, in one run.

    python -m bench.bench_fusion [--out results/fusion.json] [--threads 2]

Each detector runs once per photo (its config's inference settings, with a low score threshold so AP sees the
whole curve); the fusion settings are then compared on the same detections. Score calibration is fitted on dlib
``training.xml`` (disjoint from ``testing.xml``) and applied to both test sets. Precision / recall are read at
each detector's (or the pipeline's) own operating threshold.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from common.detections import Detections
from common.io import read_image
from common.metrics import average_precision
from detection.evaluation import load_benchmark
from common.registry import DETECTORS as REGISTERED_DETECTORS
from pipeline import default_config_path, detection_config, detector_from_config
from fusion.calibration import ScoreCalibrator, labelled_scores
from fusion.merge import FusionSettings, fuse

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SETS = {"dlib testing.xml (AP@0.5)": SHARED / "data/detection/dlib_faces/testing.xml",
        "CompreFace (nose points)": SHARED / "data/faces_in_photos/compreface/annotations.json"}
CALIBRATION_SET = SHARED / "data/detection/dlib_faces/training.xml"
DETECTORS = ("blazeface", "mtcnn")
LOW_THRESHOLD = {"blazeface": 0.05, "mtcnn": 0.0}
FUSIONS = {  # name → (settings, calibrated?)
    "nms": (FusionSettings("nms"), False),
    "soft_nms gaussian": (FusionSettings("soft_nms", soft_nms_method="gaussian"), False),
    "wbf": (FusionSettings("wbf"), False),
    "wbf, calibrated": (FusionSettings("wbf"), True),
    "nms, calibrated": (FusionSettings("nms"), True),
    "wbf, calibrated, 2 votes": (FusionSettings("wbf", min_votes=2), True),
}


def run_detectors(items: list[dict], loose: bool = False) -> tuple[dict[str, list[Detections]], dict[str, float]]:
    """Each detector's faces on each photo, and its seconds per photo; ``loose``: calibration's low thresholds."""
    found, seconds = {}, {}
    images = [read_image(item["image_path"]) for item in items]
    for name in DETECTORS:
        cfg = detection_config(name, default_config_path(name), {"inference.score_threshold": LOW_THRESHOLD[name]},
                               set_items=REGISTERED_DETECTORS.get(name).calibration_set if loose else ())
        detector = detector_from_config(cfg, "cpu")
        detector.detect([images[0][:64, :64].copy()])  # warm-up
        start = time.perf_counter()
        found[name] = [detector.detect([image])[0] for image in images]
        seconds[name] = (time.perf_counter() - start) / len(images)
    return found, seconds


def score(found: list[Detections], items: list[dict], threshold: float) -> dict:
    curve = average_precision([{**item, "pred_boxes": d.boxes, "pred_scores": d.scores}
                               for d, item in zip(found, items)])
    precision, recall = curve.at_threshold(threshold)
    return {"ap": round(curve.ap, 4), "precision": round(precision, 3), "recall": round(recall, 3),
            "threshold": threshold}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    operating = {name: detection_config(name, default_config_path(name))["inference"]["score_threshold"]
                 for name in DETECTORS}
    pipeline_threshold = detection_config("fusion", default_config_path("fusion"))["inference"]["score_threshold"]
    calibration_items = load_benchmark(CALIBRATION_SET)
    calibration_found, _ = run_detectors(calibration_items, loose=True)
    calibrators = {}
    for name in DETECTORS:
        scores, hits, *_ = labelled_scores(calibration_found[name], calibration_items)
        calibrators[name] = ScoreCalibrator("logistic").fit(scores, hits)

    results = {}
    for set_name, path in SETS.items():
        items = load_benchmark(path)
        found, seconds = run_detectors(items)
        rows = {name: {**score(found[name], items, operating[name]), "seconds_per_photo": round(seconds[name], 3)}
                for name in DETECTORS}
        calibrated = {name: [Detections(d.boxes, calibrators[name](d.scores), d.landmarks) for d in found[name]]
                      for name in DETECTORS}
        for fusion_name, (settings, use_calibration) in FUSIONS.items():
            source = calibrated if use_calibration else found
            start = time.perf_counter()
            fused = [fuse([source[name][i] for name in DETECTORS], settings)[0] for i in range(len(items))]
            merge_seconds = (time.perf_counter() - start) / len(items)
            rows[f"fusion: {fusion_name}"] = {**score(fused, items, pipeline_threshold),
                                              "seconds_per_photo": round(sum(seconds.values()) + merge_seconds, 3)}
        results[set_name] = rows
        print(f"\n{set_name}: {len(items)} photos")
        print(f"{'':32s} {'AP':>6s} {'prec':>6s} {'recall':>6s} {'s/photo':>8s}")
        for name, row in rows.items():
            print(f"{name:32s} {row['ap']:6.3f} {row['precision']:6.3f} {row['recall']:6.3f} "
                  f"{row['seconds_per_photo']:8.3f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
