"""Face-detection dataset shared by every detector: letterboxed square images with boxes, landmarks, ignore flags.

Images come out as uint8 (3, S, S) tensors; each detector normalises them its own way. Augmentation uses
albumentations so boxes and keypoints move with the pixels; a horizontal flip also swaps left/right landmarks.
Every random choice is seeded from (seed, epoch, index), so an epoch can be replayed exactly.
"""
from __future__ import annotations

import copy

import albumentations as A
import cv2
import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.utils import draw_bounding_boxes, make_grid

from common.config import save_config
from common.engine import Trainer, is_main_process, make_loader
from common.io import read_image
from common.metrics import average_precision
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


def fit_detector(model, task, train_set, val_set, cfg: dict, name: str, device, make_scheduler=None):
    """The shared detector training run: loaders, AdamW with a cosine schedule (or ``make_scheduler(optimizer)``),
    the shared ``Trainer`` (best checkpoint by validation AP@0.5, else by loss), the effective config saved,
    auto-resume, and ``fit``. ``task`` gives ``step``, ``evaluate`` and ``visualize``; ``cfg`` has the detection
    ``train``/``output`` keys."""
    tcfg, out = cfg["train"], cfg["output"]
    train_loader = make_loader(train_set, tcfg["batch_size"], True, tcfg["num_workers"], collate_detection,
                               tcfg["seed"])
    val_loader = make_loader(val_set, tcfg["batch_size"], False, tcfg["num_workers"], collate_detection,
                             tcfg["seed"]) if len(val_set) else None
    optimizer = torch.optim.AdamW(model.parameters(), lr=tcfg["lr"], weight_decay=tcfg["weight_decay"])
    scheduler = make_scheduler(optimizer) if make_scheduler else torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=max(tcfg["epochs"], 1), eta_min=tcfg["lr"] * 0.01)
    trainer = Trainer(model, optimizer, scheduler, task.step, out["checkpoint_dir"], out["log_dir"], name,
                      device, tcfg["epochs"], copy.deepcopy(cfg), evaluate_fn=task.evaluate,
                      visualize_fn=task.visualize, grad_clip=tcfg["grad_clip"], amp=tcfg["amp"],
                      checkpoint_every=tcfg["checkpoint_every"], best_metric="ap50" if val_loader else "loss",
                      best_mode="max" if val_loader else "min", seed=tcfg["seed"])
    if is_main_process():
        save_config(cfg, out["checkpoint_dir"])
    resume = out["resume"] or (trainer.auto_resume_path() if out["auto_resume"] else None)
    if resume:
        trainer.resume(resume)
    return trainer.fit(train_loader, val_loader)


def validation_metrics(batches) -> dict:
    """Mean of each loss term over validation batches and AP@0.5 of their detections. ``batches`` yields
    (terms dict, one ``Detections`` per image, the batch's targets)."""
    sums, count, images = {}, 0, []
    for terms, detections, targets in batches:
        for key, value in terms.items():
            sums[key] = sums.get(key, 0.0) + float(value)
        count += 1
        for found, target in zip(detections, targets):
            images.append({"pred_boxes": found.boxes, "pred_scores": found.scores,
                           "gt_boxes": target["boxes"], "gt_ignore": target["ignore"]})
    metrics = {k: v / max(count, 1) for k, v in sums.items()}
    metrics["ap50"] = average_precision(images).ap
    return metrics


def detection_grid(images: torch.Tensor, targets: list[dict], detections, min_score: float = 0.5) -> torch.Tensor:
    """(3, H, W) uint8 grid of the images with ground truth (green) and detections scoring ≥ ``min_score`` (red)."""
    drawn = []
    for image, target, found in zip(images, targets, detections):
        confident = found[found.scores >= min_score]
        for boxes, colour in ((target["boxes"], "lime"), (confident.boxes, "red")):
            if len(boxes):
                image = draw_bounding_boxes(image, boxes, colors=colour, width=1)
        drawn.append(image)
    return make_grid(drawn, nrow=4)
