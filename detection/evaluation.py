"""``evaluate.py --benchmark detection``: run a detector over annotated photos and score AP@0.5."""
from __future__ import annotations

import json
from pathlib import Path

from tqdm import tqdm

from common.io import read_image
from common.metrics import PrecisionRecall, average_precision
from detection.data.readers import read_annotations


def is_nose_point_file(path: Path) -> bool:
    """CompreFace-style ``annotations.json`` with ``nose_points_xy``: faces marked by one point each."""
    if path.suffix.lower() != ".json":
        return False
    try:
        return "nose_points_xy" in json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False


def load_benchmark(path: str | Path, data_root=None, fmt=None) -> list[dict]:
    """→ [{"image_path", and "gt_boxes"/"gt_ignore" or "gt_points"}]."""
    path = Path(path)
    if is_nose_point_file(path):
        points = json.loads(path.read_text(encoding="utf-8"))["nose_points_xy"]
        root = Path(data_root) if data_root else path.parent
        return [{"image_path": root / name, "gt_points": xy} for name, xy in sorted(points.items())]
    return [{"image_path": a.image_path, "gt_boxes": a.boxes, "gt_ignore": a.ignore}
            for a in read_annotations(path, data_root=data_root, fmt=fmt)]


def evaluate_detector(detector, items: list[dict], iou_threshold: float = 0.5) -> PrecisionRecall:
    scored = []
    for item in tqdm(items, desc="detecting", unit="image"):
        detections = detector.detect([read_image(item["image_path"])])[0]
        scored.append({**item, "pred_boxes": detections.boxes, "pred_scores": detections.scores})
    return average_precision(scored, iou_threshold)
