"""Face-detection dataset shared by every detector: letterboxed square images with boxes, landmarks, ignore flags.

Images come out as uint8 (3, S, S) tensors; each detector normalises them its own way. Augmentation uses
albumentations so boxes and keypoints move with the pixels; a horizontal flip also swaps left/right landmarks.
Every random choice is seeded from (seed, epoch, index), so an epoch can be replayed exactly.
"""
from __future__ import annotations

import albumentations as A
import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from common.io import read_image
from detection.data.readers import FaceAnnotation

# Landmark order after a horizontal flip: the image-left eye becomes the image-right one, and so on.
FLIP_LANDMARK_ORDER = [1, 0, 2, 4, 3]


def letterbox(image: np.ndarray, size: int) -> tuple[np.ndarray, float]:
    """Resize the longer side to ``size`` and pad right/bottom with zeros → (size × size image, scale)."""
    height, width = image.shape[:2]
    scale = size / max(height, width)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(image, (new_w, new_h), interpolation=interpolation)
    canvas = np.zeros((size, size, 3), dtype=np.uint8)
    canvas[:new_h, :new_w] = resized
    return canvas, scale


def build_augmentation(cfg: dict) -> A.Compose:
    """Scale/shift, flip, brightness/contrast and saturation, keeping boxes and keypoints consistent."""
    return A.Compose(
        [
            A.Affine(scale=tuple(cfg["scale_range"]), translate_percent=(-cfg["translate"], cfg["translate"]),
                     border_mode=cv2.BORDER_CONSTANT, fill=0, p=cfg["affine_p"]),
            A.HorizontalFlip(p=cfg["flip_p"]),
            A.RandomBrightnessContrast(brightness_limit=cfg["brightness"], contrast_limit=cfg["contrast"], p=0.5),
            A.HueSaturationValue(hue_shift_limit=0, sat_shift_limit=cfg["saturation"], val_shift_limit=0, p=0.5),
        ],
        bbox_params=A.BboxParams(format="pascal_voc", label_fields=["face_ids"], min_visibility=cfg["min_visibility"],
                                 clip=True),
        keypoint_params=A.KeypointParams(format="xy", label_fields=["point_ids"], remove_invisible=False),
        save_applied_params=True,
    )


DEFAULT_AUGMENTATION = {"scale_range": [0.7, 1.3], "translate": 0.1, "affine_p": 0.5, "flip_p": 0.5,
                        "brightness": 0.2, "contrast": 0.2, "saturation": 30, "min_visibility": 0.4}


class FaceDetectionDataset(Dataset):
    def __init__(self, annotations: list[FaceAnnotation], input_size: int, augmentation: dict | None = None,
                 seed: int = 0):
        self.annotations = annotations
        self.input_size = input_size
        self.transform = build_augmentation(augmentation) if augmentation is not None else None
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.annotations)

    def __getitem__(self, index: int):
        annotation = self.annotations[index]
        image, scale = letterbox(read_image(annotation.image_path), self.input_size)
        boxes = annotation.boxes * scale
        landmarks = annotation.landmarks * scale  # NaN stays NaN
        ignore = annotation.ignore.copy()
        if self.transform is not None:
            image, boxes, landmarks, ignore = self._augment(index, image, boxes, landmarks, ignore)
        target = {
            "boxes": torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "landmarks": torch.as_tensor(landmarks, dtype=torch.float32).reshape(-1, 5, 2),
            "ignore": torch.as_tensor(ignore, dtype=torch.bool).reshape(-1),
            "scale": scale,
            "image_path": str(annotation.image_path),
        }
        return torch.from_numpy(image).permute(2, 0, 1).contiguous(), target  # (3, S, S) uint8

    def _augment(self, index, image, boxes, landmarks, ignore):
        self.transform.set_random_seed(hash((self.seed, self.epoch, index)) % 2**32)
        known = ~np.isnan(landmarks).any(axis=2)  # (N, 5)
        points = np.nan_to_num(landmarks, nan=0.0).reshape(-1, 2)  # (N * 5, 2)
        out = self.transform(image=image, bboxes=boxes.reshape(-1, 4), face_ids=np.arange(len(boxes)),
                             keypoints=points, point_ids=np.arange(len(points)))
        kept = np.asarray(out["face_ids"], dtype=np.int64)
        new_points = np.asarray(out["keypoints"], dtype=np.float32).reshape(-1, 5, 2)[:, :, :2]
        new_points = np.where(known[:, :, None], new_points, np.nan)
        if any(name == "HorizontalFlip" for name, _ in out["applied_transforms"]):
            new_points = new_points[:, FLIP_LANDMARK_ORDER]
        return (out["image"], np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4), new_points[kept],
                ignore[kept])


def collate_detection(batch):
    """→ (images (B, 3, S, S) uint8, list of per-image target dicts)."""
    images, targets = zip(*batch)
    return torch.stack(images), list(targets)
