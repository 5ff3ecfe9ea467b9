"""Mosaic training data: several photos tiled into one square input, so one sample holds many faces.

A sample is, with probability ``p``, an n × n mosaic (n drawn from ``grids``: 2 → 4 photos, 3 → 9, a crowded
scene) whose cell borders are jittered by up to ``jitter`` of a cell; each photo is shrunk to fit its cell
(times a factor drawn from ``cell_scale``) and placed at a random spot inside it, so no face is cut. Otherwise
the photo alone is letterboxed. The shared albumentations pipeline (``detection.data.dataset``: affine, flip
with the landmark swap, colour) then runs on the whole input. Every random choice derives from (seed, epoch,
index), so an epoch replays exactly after a resume.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch

from common.errors import InputError
from common.io import read_image
from detection.data.dataset import FaceDetectionDataset
from detection.data.readers import FaceAnnotation

MOSAIC_DEFAULTS = {"p": 0.8, "grids": [2, 3], "jitter": 0.3, "cell_scale": [0.5, 1.0]}


class MosaicDataset(FaceDetectionDataset):
    def __init__(self, annotations: list[FaceAnnotation], input_size: int, augmentation: dict | None,
                 mosaic: dict, seed: int = 0):
        super().__init__(annotations, input_size, augmentation, seed)
        if not annotations:
            raise InputError("mosaic training data is empty: no image has a face to learn from")
        self.p, self.grids, self.jitter = mosaic["p"], list(mosaic["grids"]), mosaic["jitter"]
        self.cell_scale = tuple(mosaic["cell_scale"])

    def _place(self, annotation: FaceAnnotation, canvas: np.ndarray, cell: tuple[int, int, int, int],
               rng: np.random.Generator):
        """Paste the photo, shrunk to fit ``cell`` (x1, y1, x2, y2) at a random spot → its boxes, landmarks."""
        image = read_image(annotation.image_path)
        x1, y1, x2, y2 = cell
        height, width = image.shape[:2]
        scale = min((x2 - x1) / width, (y2 - y1) / height) * rng.uniform(*self.cell_scale)
        new_w, new_h = max(1, int(width * scale)), max(1, int(height * scale))
        resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        left = x1 + int(rng.integers(0, x2 - x1 - new_w + 1))
        top = y1 + int(rng.integers(0, y2 - y1 - new_h + 1))
        canvas[top:top + new_h, left:left + new_w] = resized
        offset = np.array([left, top], dtype=np.float32)
        boxes = (annotation.boxes.reshape(-1, 2, 2) * scale + offset).reshape(-1, 4)
        return boxes, annotation.landmarks * scale + offset

    def _cell_edges(self, grid: int, rng: np.random.Generator) -> np.ndarray:
        """grid + 1 increasing borders from 0 to the input size, the inner ones jittered."""
        edges = np.linspace(0, self.input_size, grid + 1)
        edges[1:-1] += rng.uniform(-self.jitter, self.jitter, grid - 1) * self.input_size / grid / 2
        return edges.round().astype(int)

    def compose(self, index: int, rng: np.random.Generator):
        """(S, S, 3) uint8 input, boxes (N, 4), landmarks (N, 5, 2), ignore (N,) of sample ``index``."""
        canvas = np.zeros((self.input_size, self.input_size, 3), dtype=np.uint8)
        if rng.random() >= self.p:
            chosen, xs, ys = [index], [0, self.input_size], [0, self.input_size]
        else:
            grid = int(rng.choice(self.grids))
            others = rng.integers(0, len(self.annotations), grid * grid - 1)
            chosen = [index, *others.tolist()]
            xs, ys = self._cell_edges(grid, rng), self._cell_edges(grid, rng)
        cells = [(xs[c], ys[r], xs[c + 1], ys[r + 1]) for r in range(len(ys) - 1) for c in range(len(xs) - 1)]
        order = rng.permutation(len(cells))
        boxes, landmarks, ignore = [], [], []
        for photo, cell_index in zip(chosen, order):
            placed_boxes, placed_points = self._place(self.annotations[photo], canvas, cells[cell_index], rng)
            boxes.append(placed_boxes)
            landmarks.append(placed_points)
            ignore.append(self.annotations[photo].ignore)
        return canvas, np.concatenate(boxes), np.concatenate(landmarks), np.concatenate(ignore)

    def __getitem__(self, index: int):
        rng = np.random.default_rng((self.seed, self.epoch, index))
        image, boxes, landmarks, ignore = self.compose(index, rng)
        if self.transform is not None:
            image, boxes, landmarks, ignore = self._augment(index, image, boxes, landmarks, ignore)
        target = {"boxes": torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                  "landmarks": torch.as_tensor(landmarks, dtype=torch.float32).reshape(-1, 5, 2),
                  "ignore": torch.as_tensor(ignore, dtype=torch.bool).reshape(-1),
                  "image_path": str(self.annotations[index].image_path)}
        return torch.from_numpy(image).permute(2, 0, 1).contiguous(), target  # (3, S, S) uint8
