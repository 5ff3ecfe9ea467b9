"""Seconds per photo of RetinaFace (configs/detection_retinaface.yaml, with its multi-scale / tiled options) and
MTCNN (configs/detection_mtcnn.yaml) on the same photos, in one run; and RetinaFace's images per second at
640x480 with its network run by PyTorch and by onnxruntime (``--backend onnxruntime``: same pre- and
post-processing), whole detector and network alone.

    python -m bench.bench_retinaface [--repeats 3] [--threads 1] [--out result.json] [--onnx-only] [--sets dlib]
                                     [--yolo-weights runs/yolo_student/checkpoints/yolo_best.pth]

``--yolo-weights`` adds a trained YOLO face detector (configs/detection_yolo.yaml, the checkpoint's width and
depth) to the photo timings.

Photos: dlib ``testing.xml`` (5 photos of ~500 px) and the 18 CompreFace photos (0.2 to 36 megapixels), read
once beforehand, so the figures are detection time alone. Each figure is the best of ``--repeats`` passes over
a photo set, the detectors alternating so a slow phase of a shared machine hits all of them.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import torch

from bench.timing import best_seconds, report
from common.export import use_onnxruntime
from common.io import read_image
from common.tiling import pad_to_multiple
from detection.evaluation import load_benchmark
from detection.retinaface.detector import preprocess
from detection.retinaface.targets import INPUT_MULTIPLE
from pipeline import default_config_path, detection_config, detector_from_config

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
PHOTO_SETS = {"dlib": SHARED / "data/detection/dlib_faces/testing.xml",
              "compreface": SHARED / "data/faces_in_photos/compreface/annotations.json"}
VARIANTS = {
    "mtcnn": ("mtcnn", {}),
    "retinaface": ("retinaface", {}),
    "retinaface_long320": ("retinaface", {"inference.long_side": 320}),
    "retinaface_min_face_20": ("retinaface", {"inference.min_face_px": 20}),
}
BACKEND_PHOTO = SHARED / "data/faces_in_photos/compreface/016_8.jpg"
BACKEND_SIZE = (640, 480)  # width, height
BACKEND_CALLS = 10  # photos per timed call


def torch_vs_onnxruntime(threads: int, repeats: int) -> dict:
    """RetinaFace (the config's MobileNet-0.25) at 640x480: images/s of the whole detector and of the network
    alone, its network run by PyTorch and by onnxruntime with the same threads."""
    photo = cv2.resize(read_image(BACKEND_PHOTO), BACKEND_SIZE, interpolation=cv2.INTER_AREA)
    cfg = detection_config("retinaface", default_config_path("retinaface"), {"inference.long_side": max(BACKEND_SIZE)})
    detectors = {"torch": detector_from_config(cfg, "cpu"),
                 "onnxruntime": use_onnxruntime(detector_from_config(cfg, "cpu"), threads=threads)}
    batch = torch.from_numpy(photo).permute(2, 0, 1)[None]  # (1, 3, 480, 640)
    inputs = pad_to_multiple(preprocess(batch), INPUT_MULTIPLE)
    runs = {}
    for backend, detector in detectors.items():
        runs[f"{backend}_detector"] = lambda d=detector: [d.detect([photo]) for _ in range(BACKEND_CALLS)]
        runs[f"{backend}_network"] = lambda m=detector.model: [m(inputs) for _ in range(BACKEND_CALLS)]
    with torch.inference_mode():
        seconds = best_seconds(runs, repeats)
    width, height = BACKEND_SIZE
    results = {f"{width}x{height}/{name}_img_per_s": round(BACKEND_CALLS / value, 2) for name, value in seconds.items()}
    for part in ("detector", "network"):
        results[f"{width}x{height}/onnxruntime_vs_torch_{part}"] = round(
            seconds[f"torch_{part}"] / seconds[f"onnxruntime_{part}"], 3)
    for backend, detector in detectors.items():
        results[f"{width}x{height}/{backend}_faces"] = len(detector.detect([photo])[0])
    return results


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--onnx-only", action="store_true", help="only the PyTorch vs onnxruntime figures")
    parser.add_argument("--yolo-weights", help="a YOLO checkpoint (train.py --detector yolo) to time as well")
    parser.add_argument("--sets", nargs="+", choices=sorted(PHOTO_SETS), default=list(PHOTO_SETS),
                        help="photo sets to time (CompreFace's 33-megapixel portraits are the slow part)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = {"threads": args.threads, **torch_vs_onnxruntime(args.threads, args.repeats)}
    if args.onnx_only:
        return report(results, args.out)
    variants = dict(VARIANTS)
    if args.yolo_weights:
        variants["yolo"] = ("yolo", {"model.weights": args.yolo_weights})
    detectors = {name: detector_from_config(detection_config(kind, default_config_path(kind), overrides), "cpu")
                 for name, (kind, overrides) in variants.items()}
    for set_name in args.sets:
        path = PHOTO_SETS[set_name]
        photos = [read_image(item["image_path"]) for item in load_benchmark(path)]
        runs = {name: (lambda d=detector: [d.detect([photo]) for photo in photos])
                for name, detector in detectors.items()}
        for name, seconds in best_seconds(runs, args.repeats, warmup=1).items():
            results[f"{set_name}/{name}_ms_per_photo"] = round(1000 * seconds / len(photos), 1)
    return report(results, args.out)


if __name__ == "__main__":
    main()
