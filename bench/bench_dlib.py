"""Throughput of our DlibResNet (weights imported from dlib's .dat) vs dlib's own network on the same face chips.

    python -m bench.bench_dlib [--chips 32] [--threads 2] [--repeats 3] [--out result.json]

Chips: dlib's own 150-px chips (HOG detector, 5-point landmarks, get_face_chip) of LFW photos. Ours runs the
whole set as one batch under ``torch.set_num_threads(--threads)``. dlib-bin's network has no BLAS and runs on
one core, and one network object cannot be shared between threads, so dlib is timed both as one process and
as ``--threads`` worker processes (each with its own network) splitting the chips. Each figure is the best of
``--repeats`` passes, the runners alternating; the descriptors of both are compared as a sanity check.
"""
from __future__ import annotations

import argparse
import json
from contextlib import nullcontext
from multiprocessing import get_context
from pathlib import Path

import dlib
import numpy as np
import torch

from bench.timing import best_seconds, keep_freed_memory_in_heap
from common.io import read_image
from embedding.dlib_resnet import DLIB_INPUT_SCALE, INPUT_SIZE, default_descriptor_file, load_dlib_resnet

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
DEFAULT_LFW = SHARED / "data/lfw/deepfunneled"
CHIP_PADDING = 0.25
_worker_recogniser = None  # one dlib network per worker process


def _init_worker(path: str) -> None:
    global _worker_recogniser
    _worker_recogniser = dlib.face_recognition_model_v1(path)


def _worker_descriptors(chips: list[np.ndarray]) -> np.ndarray:
    return np.array([np.array(d) for d in _worker_recogniser.compute_face_descriptor(chips)])


def dlib_chips(count: int, lfw: Path) -> list[np.ndarray]:
    models = default_descriptor_file().parent
    detector = dlib.get_frontal_face_detector()
    landmarker = dlib.shape_predictor(str(models / "shape_predictor_5_face_landmarks.dat"))
    chips = []
    for path in sorted(lfw.glob("*/*_0001.jpg")):
        image = read_image(path)
        found = detector(image, 1)
        if found:
            chips.append(dlib.get_face_chip(image, landmarker(image, found[0]), INPUT_SIZE, CHIP_PADDING))
        if len(chips) == count:
            return chips
    raise RuntimeError(f"only {len(chips)} faces found under {lfw}; wanted {count}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lfw", type=Path, default=DEFAULT_LFW, help="LFW deepfunneled/ folder")
    parser.add_argument("--chips", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory_in_heap()
    descriptor_file = default_descriptor_file()
    chips = dlib_chips(args.chips, args.lfw)
    model = load_dlib_resnet(descriptor_file)
    batch = (torch.from_numpy(np.stack(chips)).permute(0, 3, 1, 2).float()
             - model.input_mean.reshape(1, 3, 1, 1)) / DLIB_INPUT_SCALE  # (N, 3, 150, 150)
    recogniser = dlib.face_recognition_model_v1(str(descriptor_file))
    halves = [chips[i::args.threads] for i in range(args.threads)]
    workers = (get_context("spawn").Pool(args.threads, _init_worker, (str(descriptor_file),)) if args.threads > 1
               else nullcontext())
    with workers as pool:

        def ours() -> np.ndarray:
            with torch.inference_mode():
                return model(batch).numpy()

        runs = {"ours": ours, "dlib_1_process": lambda: recogniser.compute_face_descriptor(chips)}
        if args.threads > 1:
            runs[f"dlib_{args.threads}_processes"] = lambda: pool.map(_worker_descriptors, halves)
        seconds = best_seconds(runs, args.repeats, warmup=1)
    reference = np.array([np.array(d) for d in recogniser.compute_face_descriptor(chips)])
    mine = ours()
    cosine = (mine * reference).sum(1) / np.linalg.norm(mine, axis=1) / np.linalg.norm(reference, axis=1)
    rates = {name: len(chips) / s for name, s in seconds.items()}
    ratios = {f"ours_vs_{name}": rates["ours"] / rate for name, rate in rates.items() if name != "ours"}
    result = {"chips": len(chips), "threads": args.threads, "images_per_s": rates, "ratios": ratios,
              "min_cosine": float(cosine.min())}
    for name, rate in rates.items():
        print(f"{name:>18}: {rate:7.1f} images/s")
    print(", ".join(f"{name}: {ratio:.2f}x" for name, ratio in ratios.items()) + f"; min cosine {cosine.min():.7f}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
