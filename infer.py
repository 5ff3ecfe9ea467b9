#!/usr/bin/env python
"""Detect faces in an image, a folder of images, a video file or a webcam, and write them to JSON.

    python infer.py --detector blazeface --input photo.jpg --out dets.json --save-vis vis/
    python infer.py --detector blazeface --input clip.mp4 --out dets.json        # keys "clip.mp4#<frame>"
    python infer.py --detector blazeface --input 0 --max-frames 100 --out cam.json  # webcam index 0
    python infer.py --detector retinaface --input photo.jpg --out dets.json --backend onnxruntime

Output: {"<image path or video#frame>": [{"box": [x1, y1, x2, y2], "score": s, "landmarks": [[x, y], ...]}, ...]}
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from common.errors import InputError
from common.cli import MIN_FACE_PX_HELP, min_face_px_arg, run_cli
from common.export import DEFAULT_CACHE, use_onnxruntime
from common.io import ImageReadError, list_images, read_image
from pipeline import default_config_path, detection_config, detector_from_config, list_detectors

VIDEO_EXTENSIONS = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"}


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--detector", default="blazeface", choices=list_detectors(),
                        help="fusion: the detectors of configs/pipeline.yaml, merged")
    parser.add_argument("--config", help="detector config (default: configs/detection_<detector>.yaml)")
    parser.add_argument("--weights", help="weights (default: model.weights of the config)")
    parser.add_argument("--input", required=True, help="image, folder, video file, or webcam index (0, 1, ...)")
    parser.add_argument("--out", required=True, help="JSON file of detections")
    parser.add_argument("--save-vis", help="folder for images with the detections drawn")
    parser.add_argument("--score-threshold", type=float, help="default: inference.score_threshold of the config")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backend", default="torch", choices=["torch", "onnxruntime"],
                        help="what runs the networks; pre- and post-processing are the same either way")
    parser.add_argument("--onnx-dir", help="onnxruntime: folder of exported networks (python -m pipeline.export); "
                                           "a network missing there is exported into it (default: runs/onnx_cache)")
    parser.add_argument("--min-face-px", type=min_face_px_arg, metavar="PX", help=MIN_FACE_PX_HELP)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key of the detector config, e.g. model.variant=full (repeatable)")
    parser.add_argument("--max-frames", type=int, default=None, help="stop a video/webcam after this many frames")
    return parser.parse_args(argv)


def draw(image_rgb: np.ndarray, detections) -> np.ndarray:
    canvas = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR)
    thickness = max(1, round(max(canvas.shape[:2]) / 400))
    for face in detections.to_json():
        x1, y1, x2, y2 = (int(round(v)) for v in face["box"])
        cv2.rectangle(canvas, (x1, y1), (x2, y2), (0, 220, 0), thickness)
        cv2.putText(canvas, f"{face['score']:.2f}", (x1, max(0, y1 - 4)), cv2.FONT_HERSHEY_SIMPLEX,
                    0.4 * thickness, (0, 220, 0), thickness)
        for x, y in face["landmarks"]:
            cv2.circle(canvas, (int(round(x)), int(round(y))), thickness + 1, (0, 0, 255), -1)
    return canvas


def frames(source: str, max_frames: int | None):
    """Yield (key, RGB frame) from a video file or a webcam index."""
    capture = cv2.VideoCapture(int(source) if source.isdigit() else source)
    if not capture.isOpened():
        raise InputError(f"cannot open video source {source!r}")
    index = 0
    try:
        while max_frames is None or index < max_frames:
            ok, frame = capture.read()
            if not ok:
                break
            yield f"{source}#{index}", cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            index += 1
    finally:
        capture.release()


def images(source: Path):
    """Yield (path, RGB image). A single file that cannot be read is an error; in a folder such files are skipped
    with a warning, and it is an error only when none can be read."""
    if not source.is_dir():
        yield str(source), read_image(source)
        return
    paths = list_images(source)
    if not paths:
        raise InputError(f"no images found in {source}")
    skipped = 0
    for path in paths:
        try:
            image = read_image(path)
        except ImageReadError as error:
            skipped += 1
            tqdm.write(f"warning: skipped {error}", file=sys.stderr)
            continue
        yield str(path), image
    if skipped == len(paths):
        raise InputError(f"none of the {len(paths)} images in {source} could be read (each is named above)")


def main(argv=None) -> int:
    args = parse_args(argv)
    cfg = detection_config(args.detector, args.config or default_config_path(args.detector),
                           {"model.weights": args.weights, "inference.score_threshold": args.score_threshold},
                           [*([f"inference.min_face_px={args.min_face_px}"] if args.min_face_px else []), *args.set])
    detector = detector_from_config(cfg, args.device)
    if args.backend == "onnxruntime":
        use_onnxruntime(detector, args.onnx_dir or DEFAULT_CACHE, args.device)
    elif args.onnx_dir:
        raise InputError("--onnx-dir applies to --backend onnxruntime only")
    source = Path(args.input)
    if args.input.isdigit() or source.suffix.lower() in VIDEO_EXTENSIONS:
        stream = frames(args.input, args.max_frames)
    elif args.max_frames is not None:
        raise InputError("--max-frames applies to a video file or a webcam, not to images")
    elif source.exists():
        stream = images(source)
    else:
        raise FileNotFoundError(f"input not found: {source}")
    vis_dir = Path(args.save_vis) if args.save_vis else None
    if vis_dir:
        vis_dir.mkdir(parents=True, exist_ok=True)
    results = {}
    for key, image in tqdm(stream, desc="detecting", unit="frame"):
        detections = detector.detect([image])[0]
        results[key] = detections.to_json()
        if vis_dir:
            path, _, frame = key.partition("#")
            name = Path(path).stem + (f"_{int(frame):06d}" if frame else "") + ".jpg"
            cv2.imwrite(str(vis_dir / name), draw(image, detections))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1), encoding="utf-8")
    print(f"{sum(len(v) for v in results.values())} faces in {len(results)} images/frames → {out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
