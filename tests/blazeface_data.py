"""Small real training data for detector tests: face-centred crops of the dlib photos, written as a seed CSV, and
short from-scratch trainings on them."""
from __future__ import annotations

import csv
from pathlib import Path

import torch
from PIL import Image

from detection.data.readers import read_dlib_xml
from pipeline import detection_config
from pipeline.training import train_detector
from tests.conftest import shared_path


def write_face_crops(xml_path: Path, out_dir: Path, limit: int, context: float = 3.0) -> Path:
    """Crop a square of ``context`` × face size around each face (other faces whose centre falls inside come
    along, clipped), save the crops and a seed-format CSV; return the CSV path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    crops = 0
    for annotation in read_dlib_xml(xml_path):
        photo = Image.open(annotation.image_path).convert("RGB")
        for face in annotation.boxes:
            if crops >= limit:
                break
            side = context * max(face[2] - face[0], face[3] - face[1])
            cx, cy = (face[0] + face[2]) / 2, (face[1] + face[3]) / 2
            left, top = max(0.0, cx - side / 2), max(0.0, cy - side / 2)
            right, bottom = min(photo.width, left + side), min(photo.height, top + side)
            crop = photo.crop((round(left), round(top), round(right), round(bottom)))
            name = f"crop_{crops:02d}.png"
            crop.save(out_dir / name)
            for box in annotation.boxes:
                bx, by = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
                if not (left <= bx < right and top <= by < bottom):
                    continue
                x1, y1 = max(box[0], left) - round(left), max(box[1], top) - round(top)
                x2, y2 = min(box[2], right) - round(left), min(box[3], bottom) - round(top)
                rows.append([name, f"{x1:.1f}", f"{y1:.1f}", f"{x2 - x1:.1f}", f"{y2 - y1:.1f}", crop.width,
                             crop.height])
            crops += 1
    csv_path = out_dir / "faces.csv"
    with csv_path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image_path", "x1", "y1", "w", "h", "width", "height"])
        writer.writerows(rows)
    return csv_path


def overfit_crops(detector: str, folder: Path, lr: float, epochs: int = 60, input_size: int = 160) -> list[dict]:
    """``detector`` trained from scratch through the shared trainer on 8 dlib face crops, without augmentation,
    validated on the same crops: the history of epoch metrics."""
    torch.set_num_threads(1)
    crops = write_face_crops(shared_path("data", "detection", "dlib_faces", "training_with_face_landmarks.xml"),
                             folder / "crops", limit=8)
    cfg = detection_config(detector, None, {
        "data.train": str(crops), "data.val": str(crops), "data.format": "csv", "data.augment": False,
        "model.pretrained": False, "train.input_size": input_size, "train.epochs": epochs, "train.batch_size": 8,
        "train.lr": lr, "train.num_workers": 0, "train.device": "cpu", "train.checkpoint_every": 1000,
        "output.checkpoint_dir": str(folder / "checkpoints"), "output.log_dir": str(folder / "logs"),
        "output.auto_resume": False})
    return train_detector(cfg)
