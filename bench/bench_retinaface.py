"""Seconds per photo of RetinaFace (configs/detection_retinaface.yaml, with its multi-scale / tiled options) and
MTCNN (configs/detection_mtcnn.yaml) on the same photos, in one run.

    python -m bench.bench_retinaface [--repeats 3] [--threads 1] [--out result.json]

Photos: dlib ``testing.xml`` (5 photos of ~500 px) and the 18 CompreFace photos (0.2 to 36 megapixels), read
once beforehand, so the figures are detection time alone. Each figure is the best of ``--repeats`` passes over
a photo set, the detectors alternating so a slow phase of a shared machine hits all of them.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from bench.timing import best_seconds, report
from common.io import read_image
from detection.evaluation import load_benchmark
from detection.training import default_config_path, detection_config, detector_from_config

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
PHOTO_SETS = {"dlib": SHARED / "data/detection/dlib_faces/testing.xml",
              "compreface": SHARED / "data/faces_in_photos/compreface/annotations.json"}
VARIANTS = {
    "mtcnn": ("mtcnn", {}),
    "retinaface": ("retinaface", {}),
    "retinaface_long320": ("retinaface", {"inference.long_side": 320}),
    "retinaface_scales_1_2": ("retinaface", {"inference.scales": [1.0, 2.0]}),
    "retinaface_tiles_1_2": ("retinaface", {"inference.tile_zooms": [1, 2]}),
}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    detectors = {name: detector_from_config(detection_config(kind, default_config_path(kind), overrides), "cpu")
                 for name, (kind, overrides) in VARIANTS.items()}
    results = {"threads": args.threads}
    for set_name, path in PHOTO_SETS.items():
        photos = [read_image(item["image_path"]) for item in load_benchmark(path)]
        runs = {name: (lambda d=detector: [d.detect([photo]) for photo in photos])
                for name, detector in detectors.items()}
        for name, seconds in best_seconds(runs, args.repeats, warmup=1).items():
            results[f"{set_name}/{name}_ms_per_photo"] = round(1000 * seconds / len(photos), 1)
    return report(results, args.out)


if __name__ == "__main__":
    main()
