"""The group-photo detection benchmark's photos: crowded rows of small faces from real LFW portraits, with boxes.

Each photo (settings: ``configs/benchmark_groups.yaml``) seats 20-60 people in rows on a painted wall: the back
row's faces are drawn log-uniformly between the smallest and largest face width, each row nearer the camera
wider, seats 1.5-2.6 face widths apart (heads nearly touching), rows close enough that a row's heads cover the
shoulders behind; then uneven light, blur, sensor noise and a JPEG (``common.composite``). Photos are 1920×1080,
3000×2000 and 3840×2160, each size with its own layouts.

A portrait's face box is the mean of several detectors' boxes on the full 250-px portrait, where every detector
finds it easily, so no one detector's box convention is the truth; portraits where they disagree, or that show a
second face inside the pasted crop, are not used (a face left unlabelled would count against every detector).

Splits: ``report`` seats the people of LFW fold 10 with seeds from ``REPORT_SEED`` (1000); ``tune`` the people of folds
1-9 with seeds from 0. The photos are written once into ``cache_dir/<split>/`` as ``labels.csv`` (the CSV
annotation format) and ``images/``, with ``manifest.json`` recording how they were made.

    python -m pipeline.group_photos --split tune
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from common.boxes import box_iou
from common.cli import run_cli
from common.composite import HEAD_CROP, paste_portraits, phone_effects, seat_layout, wall
from common.config import PROJECT_ROOT, ConfigError, load_yaml, project_path
from common.io import at_size, read_image
from common.lfw import SPLIT_FOLDS, lfw_fold_identities, split_folds, split_seed
from detection.data.readers import CSV_COLUMNS
from matching.protocol import lfw_image_dir
from pipeline.build import build_detector
from pipeline.verification import DEFAULT_LFW_ROOT

DEFAULT_CONFIG = PROJECT_ROOT / "configs" / "benchmark_groups.yaml"
GROUPS = "groups"  # the name that stands for these photos: evaluate.py --data groups, calibration.data
CONSENSUS_IOU = 0.5  # the box detectors' boxes of a portrait's face must overlap this much, pairwise
BACK_ROW_TOP = 0.12  # the back row's faces start this fraction of the photo's height down
ROW_WIDTH = 0.92     # a row spans at most this fraction of the photo's width
MAX_ROWS = 12


def groups_config(path: str | Path | None = None) -> dict:
    cfg = load_yaml(path or DEFAULT_CONFIG)
    keys = ("split", "photos_per_size", "photo_sizes", "faces", "face_px", "back_row_px", "row_growth", "spacing",
            "spread", "seed", "box_detectors", "cache_dir")
    missing = [key for key in keys if key not in cfg]
    if missing:
        raise ConfigError(f"{path or DEFAULT_CONFIG}: missing {', '.join(missing)}")
    split_folds(cfg["split"])
    low, high = cfg["face_px"]
    if not 4 <= low < high:
        raise ConfigError(f"face_px must be [smallest, largest] with 4 <= smallest < largest, got {cfg['face_px']}")
    if not low <= cfg["back_row_px"][0] <= cfg["back_row_px"][1] <= high:
        raise ConfigError(f"back_row_px {cfg['back_row_px']} must lie within face_px {cfg['face_px']}")
    if not 1 <= cfg["faces"][0] <= cfg["faces"][1]:
        raise ConfigError(f"faces must be [fewest, most] with 1 <= fewest <= most, got {cfg['faces']}")
    return cfg


class PortraitBoxes:
    """The face box of each LFW portrait (xyxy in its 250-px photo), or None where the box detectors disagree or
    see a second face in the pasted crop; cached in ``path`` (JSON, by photo name)."""

    def __init__(self, detector_names: list[str], path: Path, device: str = "cpu"):
        self.names, self.path, self.device = list(detector_names), path, device
        self.cache = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        self.cache_key = "+".join(self.names)
        self.detectors = None

    def __call__(self, photo: Path) -> np.ndarray | None:
        key = f"{self.cache_key}/{photo.name}"
        if key not in self.cache:
            self.cache[key] = self._consensus(read_image(photo))
        box = self.cache[key]
        return None if box is None else np.asarray(box, np.float32)

    def _consensus(self, image: np.ndarray) -> list[float] | None:
        if self.detectors is None:
            # a portrait's face is large: BlazeFace looks at the whole photo once, at MediaPipe's threshold
            whole_photo = {"blazeface": ["inference.min_face_px=null", "inference.score_threshold=0.5"]}
            self.detectors = [build_detector(name, device=self.device, set_items=whole_photo.get(name, []))
                              for name in self.names]
        x1, y1, x2, y2 = HEAD_CROP
        boxes = []
        for detector in self.detectors:
            found = detector.detect([image])[0]
            face = found.nearest_to_centre(*image.shape[:2])
            if face is None:
                return None
            centres = (found.boxes[:, :2] + found.boxes[:, 2:]) / 2  # (N, 2)
            in_crop = ((centres[:, 0] > x1) & (centres[:, 0] < x2) & (centres[:, 1] > y1) & (centres[:, 1] < y2))
            if int(in_crop.sum()) > 1:
                return None
            boxes.append(found.boxes[face])
        boxes = torch.stack(boxes)  # (D, 4)
        if float(box_iou(boxes, boxes).min()) < CONSENSUS_IOU:
            return None
        return [round(float(value), 2) for value in boxes.mean(0)]

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.cache, indent=0, sort_keys=True), encoding="utf-8")


def row_plan(size: tuple[int, int], cfg: dict, rng: np.random.Generator) -> list[tuple[float, float, float]]:
    """(face centre x, y, face width) of one photo's seats, back row first: 2-6 rows sharing the faces wanted, the
    back row's face width drawn, each row nearer the camera wider, as many rows as fit; the block of rows is placed
    at a random height."""
    width, height = size
    high = cfg["face_px"][1]
    for _ in range(100):
        wanted = int(rng.integers(cfg["faces"][0], cfg["faces"][1] + 1))
        per_row = math.ceil(wanted / int(rng.integers(2, 7)))
        face_px = math.exp(rng.uniform(*np.log(cfg["back_row_px"])))
        growth, spacing, spread = (rng.uniform(*cfg[key]) for key in ("row_growth", "spacing", "spread"))
        rows, counts = [], []
        while sum(counts) < wanted and face_px <= high and len(rows) < MAX_ROWS:
            try:
                seat_layout([*rows, face_px], [*counts, 1], width, height, rng, spacing, spread, BACK_ROW_TOP)
            except ConfigError:
                break
            rows.append(face_px)
            counts.append(min(max(1, int(ROW_WIDTH * width / (spacing * face_px))), per_row, wanted - sum(counts)))
            face_px *= growth
        if sum(counts) >= cfg["faces"][0]:
            seats = seat_layout(rows, counts, width, height, rng, spacing, spread, BACK_ROW_TOP)
            bottom = max(y + 1.5 * px for _, y, px in seats)
            drop = rng.uniform(0, max(0.0, height - bottom))
            return [(x, y + drop, px) for x, y, px in seats]
    raise ConfigError(f"no layout of {cfg['faces']} faces {cfg['face_px']} px wide fits a {width}x{height} photo")


def generate_groups(cfg: dict, split: str | None = None, lfw_root: str | Path | None = None, device: str = "cpu",
                    force: bool = False) -> Path:
    """Write the split's photos (once: an existing folder made with the same settings is reused) and return the
    path of its ``labels.csv``."""
    split = split or cfg["split"]
    folds = split_folds(split)
    folder = project_path(cfg["cache_dir"]) / split
    labels, manifest_path = folder / "labels.csv", folder / "manifest.json"
    settings = {key: cfg[key] for key in ("photos_per_size", "photo_sizes", "faces", "face_px", "back_row_px",
                                          "row_growth", "spacing", "spread", "seed", "box_detectors")}
    if not force and labels.is_file() and manifest_path.is_file():
        if json.loads(manifest_path.read_text(encoding="utf-8"))["settings"] == settings:
            return labels
    image_dir = lfw_image_dir(lfw_root or DEFAULT_LFW_ROOT)
    people = lfw_fold_identities(image_dir.parent / "people.txt", folds)
    photos_of = {name: sorted((image_dir / name).glob("*.jpg")) for name in people}
    portrait_boxes = PortraitBoxes(cfg["box_detectors"], project_path(cfg["cache_dir"]) / "portrait_boxes.json",
                                   device)
    first_seed = split_seed(split, cfg["seed"])
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows, records = [], []
    jobs = [(tuple(size), first_seed + index * len(cfg["photo_sizes"]) + position)
            for index in range(cfg["photos_per_size"]) for position, size in enumerate(cfg["photo_sizes"])]
    for number, (size, seed) in enumerate(tqdm(jobs, desc=f"group photos ({split})", unit="photo")):
        rng = np.random.default_rng(seed)
        seats = row_plan(size, cfg, rng)
        portraits, boxes = [], []
        for name in rng.permutation(people):
            if len(portraits) == len(seats):
                break
            photo = photos_of[name][int(rng.integers(len(photos_of[name])))]
            box = portrait_boxes(photo)
            if box is not None:
                portraits.append(photo)
                boxes.append(box)
        canvas = wall(*size, rng).astype(np.float32)
        placed = paste_portraits(canvas, portraits, boxes, seats)
        image = at_size(phone_effects(np.clip(canvas, 0, 255).astype(np.uint8), rng), size,
                        int(rng.integers(80, 93)))
        name = f"images/{number:03d}_{size[0]}x{size[1]}.jpg"
        cv2.imwrite(str(folder / name), cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
        for _, face in placed:
            x1, y1 = max(0.0, float(face[0])), max(0.0, float(face[1]))
            x2, y2 = min(float(size[0]), float(face[2])), min(float(size[1]), float(face[3]))
            rows.append([name, f"{x1:.2f}", f"{y1:.2f}", f"{x2 - x1:.2f}", f"{y2 - y1:.2f}", size[0], size[1]])
        records.append({"image": name, "seed": seed, "faces": len(placed),
                        "portraits": [str(photo.relative_to(image_dir)) for photo in portraits]})
    portrait_boxes.save()
    with open(labels, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(CSV_COLUMNS)
        writer.writerows(rows)
    manifest = {"split": split, "people": f"LFW folds {folds}", "first_seed": first_seed,
                "settings": settings, "photos": records}
    manifest_path.write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    return labels


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help=f"benchmark settings (default: {DEFAULT_CONFIG.relative_to(PROJECT_ROOT)})")
    parser.add_argument("--split", choices=list(SPLIT_FOLDS), help="default: the config's split")
    parser.add_argument("--lfw-root", help="LFW folder with people.txt and deepfunneled/ (default: ../shared/data/lfw)")
    parser.add_argument("--device", default="cpu", help="for the box detectors: cpu (default), cuda or cuda:N")
    parser.add_argument("--force", action="store_true", help="write the photos again even if they exist")
    args = parser.parse_args(argv)
    labels = generate_groups(groups_config(args.config), args.split, args.lfw_root, args.device, args.force)
    print(f"group photos: {labels}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
