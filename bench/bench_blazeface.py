"""Throughput of our BN-folded BlazeFace (front) vs MediaPipe's TFLite interpreter on the same photos.

    python -m bench.bench_blazeface [--batch 64] [--threads 2] [--compile] [--out result.json]

Torch runs batches (channels_last, inference_mode); the interpreter, like MediaPipe, runs one image
per invoke. Both get the same number of threads. Each figure is the best of ``--repeats`` timed
passes over the same images, the runners alternating. The raw outputs of both are compared as a sanity check.
"""
from __future__ import annotations

import argparse
import glob
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch

from bench.timing import best_seconds, keep_freed_memory_in_heap, report
from detection.blazeface.mediapipe_import import load_mediapipe_weights
from detection.blazeface.model import BlazeFace, fuse_batchnorm

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
DEFAULT_TFLITE = SHARED / "models/mediapipe/face_detection_short_range.tflite"
DEFAULT_IMAGES = [
    str(SHARED / "data/detection/dlib_faces/*.jpg"),
    str(SHARED / "data/faces_in_photos/compreface/*.jpg"),
]



def load_images(patterns: List[str], size: int, count: int) -> np.ndarray:
    """``count`` photos (cycling through the files) as (N, size, size, 3) float32 in [-1, 1]."""
    from PIL import Image, ImageOps

    files = sorted(f for pattern in patterns for f in glob.glob(pattern))
    if not files:
        raise SystemExit(f"no images match {patterns}")
    images = []
    for f in files:
        with Image.open(f) as im:
            rgb = ImageOps.exif_transpose(im).convert("RGB").resize((size, size), Image.BILINEAR)
        images.append(np.asarray(rgb, dtype=np.float32) / 127.5 - 1.0)
    return np.stack([images[i % len(images)] for i in range(count)])



def run_tflite(path: Path, images: np.ndarray, threads: int):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=threads)
    interpreter.allocate_tensors()
    input_index = interpreter.get_input_details()[0]["index"]
    outputs = {d["shape"][-1]: d["index"] for d in interpreter.get_output_details()}
    regressors = np.empty((len(images), 896, 16), np.float32)
    scores = np.empty((len(images), 896), np.float32)

    def run():
        for i, image in enumerate(images):
            interpreter.set_tensor(input_index, image[None])
            interpreter.invoke()
            regressors[i] = interpreter.get_tensor(outputs[16])[0]  # (896, 16)
            scores[i] = interpreter.get_tensor(outputs[1])[0, :, 0]  # (896,)

    return run, regressors, scores


def main(argv=None) -> Dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tflite", type=Path, default=DEFAULT_TFLITE)
    parser.add_argument("--images", nargs="+", default=DEFAULT_IMAGES, help="glob patterns of photos")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    parser.add_argument("--no-malloc-tuning", dest="malloc_tuning", action="store_false")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (inductor, freezing)")
    parser.add_argument("--out", type=Path, help="write the figures as JSON")
    args = parser.parse_args(argv)

    malloc_tuned = args.malloc_tuning and keep_freed_memory_in_heap()
    torch.set_num_threads(args.threads)
    images = load_images(args.images, 128, args.batch)  # (N, 128, 128, 3)

    model = fuse_batchnorm(load_mediapipe_weights(BlazeFace("front"), args.tflite))
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    batch = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(memory_format=memory_format)  # (N, 3, 128, 128)

    tflite_run, ref_regressors, ref_scores = run_tflite(args.tflite, images, args.threads)
    models = {"torch_eager": model}
    if args.compile:
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True
        models["torch_compile"] = torch.compile(model)

    results: Dict[str, object] = {
        "batch": args.batch, "threads": args.threads, "channels_last": args.channels_last,
        "malloc_tuned": malloc_tuned, "repeats": args.repeats,
    }
    with torch.inference_mode():
        runs = {"tflite": tflite_run, **{name: (lambda m=m: m(batch)) for name, m in models.items()}}
        seconds = best_seconds(runs, args.repeats)
        results["tflite_img_per_s"] = args.batch / seconds["tflite"]
        for name, m in models.items():
            regressors, scores = m(batch)
            results[f"{name}_img_per_s"] = args.batch / seconds[name]
            results[f"{name}_speedup_vs_tflite"] = seconds["tflite"] / seconds[name]
            results[f"{name}_max_abs_diff_regressors"] = float(np.abs(regressors.numpy() - ref_regressors).max())
            results[f"{name}_max_abs_diff_scores"] = float(np.abs(scores.numpy() - ref_scores).max())

    return report(results, args.out)


if __name__ == "__main__":
    main()
