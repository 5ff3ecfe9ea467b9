"""MTCNN training samples: square crops of the photos labelled by their IoU with the faces.

Every stage learns from fixed-size crops (P-Net 12, R-Net 24, O-Net 48 pixels), each showing a square ``[q, q + S]``
of a photo (its *footprint*, ``MTCNNSamples.crop_boxes``):

* positives (IoU >= 0.65 with a face) and part faces (0.4 <= IoU < 0.65) carry the offsets that move the crop onto
  its best face, ``face = reference + offset * scale`` for x1, y1, x2, y2, in the conventions the cascade decodes
  them with (``detection/mtcnn/postprocess.py``, which follows facenet-pytorch): P-Net's reference box is its cell
  box ``(q + S/12, q + S)`` with scale ``11 S / 12``; R-Net's and O-Net's is ``(q + 1, q + S)`` with scale ``S``
  (an inclusive-pixel box whose crop starts one pixel before it);
* negatives (IoU < 0.3 with every face, ignore faces included) carry nothing else;
* landmark samples (IoU >= 0.65, all five points inside) carry the points relative to the footprint, five x's then
  five y's in [0, 1] (what ``decode_landmarks`` inverts).

Crops come from random squares around and away from the faces and, for R-Net and O-Net, from the boxes the earlier
stages propose on the same photos (hard samples). They are cut as the cascade cuts them (clipped to the photo,
stretched, area-resampled by ``AreaSampler``), so a net sees in training what it sees in the detector. Everything
random derives from (seed, photo index), so the same annotation list and seed give the same samples, and a photo's
samples do not depend on the other photos (nor, for random crops, on the proposer).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from common.config import ConfigError
from common.boxes import box_iou
from common.io import read_image
from detection.data.dataset import FLIP_LANDMARK_ORDER
from detection.data.readers import FaceAnnotation
from detection.mtcnn.postprocess import PNET_CELL, AreaSampler, crop_regions

STAGES = ("pnet", "rnet", "onet")
STAGE_INPUT_SIZES = {"pnet": 12, "rnet": 24, "onet": 48}

# Sample labels, as in the MTCNN reference implementations.
POSITIVE, NEGATIVE, PART, LANDMARK = 1, 0, -1, -2
LABEL_NAMES = {POSITIVE: "positive", NEGATIVE: "negative", PART: "part", LANDMARK: "landmark"}

# IoU with the best face that makes a crop a positive / part face / negative (MTCNN paper, section 2.3).
POSITIVE_IOU = 0.65
PART_IOU = 0.4
NEGATIVE_IOU = 0.3

SAMPLING_DEFAULTS = {
    "negatives_per_image": 100,      # random squares anywhere in the photo with IoU < 0.3
    "negatives_near_face": 5,        # per face: squares whose corner lies near the face's, IoU < 0.3
    "shifted_per_face": 20,          # per face: jittered squares → positives and part faces
    "landmarks_per_face": 10,        # per face with five landmarks (stages with a landmark head only)
    "min_face_size": 12,             # faces smaller than this (pixels, shorter side) give no positives
    "hard_negatives_per_image": 60,  # cap on the negatives taken from the earlier stages' proposals
}
# Jittered squares: side in [0.8 × shorter, 1.25 × longer face side], centre moved by up to 0.2 (0.1 for landmark
# crops) of the face size, as in the reference implementations' data generators.
SHIFT_SIDE_RANGE = (0.8, 1.25)
SHIFT_FRACTION = 0.2
LANDMARK_SHIFT_FRACTION = 0.1

Proposer = Callable[[np.ndarray], torch.Tensor]  # RGB (H, W, 3) uint8 photo → (K, 4) float xyxy footprints


@dataclass
class MTCNNSamples:
    """N crops of one stage. ``crop_boxes`` (N, 4) are the photo squares they show (footprints) and
    ``image_indices`` (N,) their photo's index in the annotation list."""

    stage: str
    crops: torch.Tensor             # (N, 3, S, S) uint8 RGB
    labels: torch.Tensor            # (N,) int64: 1 positive, 0 negative, -1 part, -2 landmark
    box_targets: torch.Tensor       # (N, 4) float32 offsets x1, y1, x2, y2 (0 for negatives)
    landmark_targets: torch.Tensor  # (N, 10) float32 x1..x5, y1..y5 relative to the footprint (0 unless landmark)
    crop_boxes: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 4))
    image_indices: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int64))

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def size(self) -> int:
        return STAGE_INPUT_SIZES[self.stage]

    def counts(self) -> dict[str, int]:
        return {name: int((self.labels == label).sum()) for label, name in LABEL_NAMES.items()}

    def __getitem__(self, index) -> "MTCNNSamples":
        """The samples selected by an index tensor, mask or slice."""
        return MTCNNSamples(self.stage, *(getattr(self, name)[index] for name in _TENSOR_FIELDS))

    @staticmethod
    def empty(stage: str) -> "MTCNNSamples":
        size = STAGE_INPUT_SIZES[stage]
        return MTCNNSamples(stage, torch.zeros(0, 3, size, size, dtype=torch.uint8),
                            torch.zeros(0, dtype=torch.int64), torch.zeros(0, 4), torch.zeros(0, 10),
                            torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64))

    @staticmethod
    def cat(parts: Sequence["MTCNNSamples"], stage: str) -> "MTCNNSamples":
        parts = [part for part in parts if len(part)]
        if not parts:
            return MTCNNSamples.empty(stage)
        return MTCNNSamples(stage, *(torch.cat([getattr(part, name) for part in parts]) for name in _TENSOR_FIELDS))


_TENSOR_FIELDS = ("crops", "labels", "box_targets", "landmark_targets", "crop_boxes", "image_indices")


# ---------------------------------------------------------------- conventions


def reference_boxes(footprints: torch.Tensor, stage: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The box the cascade applies a crop's offsets to, and the (K, 4) scale of each offset, for footprints (K, 4).

    P-Net: a 12-px window at stride 2 is the cell box ``floor((2x + 1) / s) .. floor((2x + 12) / s)`` whose offsets
    are fractions of ``x2 - x1`` (``pnet_boxes``): ``(q + S/12, q + S)``, scale ``11 S / 12``. R-Net / O-Net: a box
    ``b`` is cut from pixel ``b - 1`` and its offsets are fractions of ``x2 - x1 + 1`` (``crop_regions``,
    ``calibrate(inclusive=True)``): ``(q + 1, q + S)``, scale ``S``."""
    footprints = torch.as_tensor(footprints, dtype=torch.float32).reshape(-1, 4)
    side_w = footprints[:, 2] - footprints[:, 0]
    side_h = footprints[:, 3] - footprints[:, 1]
    if stage == "pnet":
        start_w, start_h = side_w / PNET_CELL, side_h / PNET_CELL
        scale_w, scale_h = side_w - start_w, side_h - start_h
    else:
        start_w, start_h = torch.ones_like(side_w), torch.ones_like(side_h)
        scale_w, scale_h = side_w, side_h
    zeros = torch.zeros_like(side_w)
    reference = footprints + torch.stack([start_w, start_h, zeros, zeros], dim=1)
    return reference, torch.stack([scale_w, scale_h, scale_w, scale_h], dim=1)


def encode_boxes(footprints: torch.Tensor, faces: torch.Tensor, stage: str) -> torch.Tensor:
    """Offsets (K, 4) that the cascade turns back into ``faces`` (K, 4) from crops of ``footprints`` (K, 4)."""
    reference, scale = reference_boxes(footprints, stage)
    return (torch.as_tensor(faces, dtype=torch.float32) - reference) / scale


def decode_boxes(footprints: torch.Tensor, offsets: torch.Tensor, stage: str) -> torch.Tensor:
    """Inverse of ``encode_boxes``: the photo box the cascade makes of a crop's offsets."""
    reference, scale = reference_boxes(footprints, stage)
    return reference + torch.as_tensor(offsets, dtype=torch.float32) * scale


def encode_landmarks(footprints: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """(K, 5, 2) photo points → (K, 10): five x's then five y's relative to the footprint."""
    xs = (points[:, :, 0] - footprints[:, 0:1]) / (footprints[:, 2:3] - footprints[:, 0:1])
    ys = (points[:, :, 1] - footprints[:, 1:2]) / (footprints[:, 3:4] - footprints[:, 1:2])
    return torch.cat([xs, ys], dim=1)


def flip_shift(footprints: torch.Tensor, stage: str) -> torch.Tensor:
    """(K,) ``start / scale`` of the reference box along x: what a horizontal flip adds to the x offsets."""
    reference, scale = reference_boxes(footprints, stage)
    return (reference[:, 0] - torch.as_tensor(footprints, dtype=torch.float32).reshape(-1, 4)[:, 0]) / scale[:, 0]


def flip_targets(box_targets: torch.Tensor, landmark_targets: torch.Tensor,
                 shift: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets of the horizontally mirrored crop. Mirroring maps footprint x to ``2q + S - x``, so the x offsets
    become ``(-dx2 - shift, -dx1 - shift)`` (``shift`` from ``flip_shift``), landmark x's become ``1 - x`` and the
    left and right points swap."""
    dx1, dy1, dx2, dy2 = box_targets.unbind(-1)
    boxes = torch.stack([-dx2 - shift, dy1, -dx1 - shift, dy2], dim=-1)
    order = torch.as_tensor(FLIP_LANDMARK_ORDER)
    xs, ys = landmark_targets[..., :5], landmark_targets[..., 5:]
    return boxes, torch.cat([(1 - xs)[..., order], ys[..., order]], dim=-1)


def cut_crops(image: np.ndarray, footprints: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Crops of the photo squares ``footprints`` (K, 4) as the cascade cuts them: clipped to the photo, stretched
    to ``size`` × ``size`` with area interpolation → (uint8 (M, 3, size, size), mask (K,) of footprints with any
    pixel inside the photo)."""
    footprints = torch.as_tensor(footprints, dtype=torch.float32).reshape(-1, 4)
    height, width = image.shape[:2]
    count = len(footprints)
    # crop_regions reads box b from pixel trunc(b) - 1: the box one pixel inside the footprint's top-left corner.
    boxes = footprints + torch.tensor([1.0, 1.0, 0.0, 0.0])
    y0, y1, x0, x1, valid = crop_regions(boxes, torch.full((count,), height), torch.full((count,), width))
    if not bool(valid.any()):
        return torch.zeros(0, 3, size, size, dtype=torch.uint8), valid
    ids = torch.zeros(int(valid.sum()), dtype=torch.int64)
    means = AreaSampler([image]).sample(ids, y0[valid], y1[valid], x0[valid], x1[valid], size, size)
    return means.round().clamp(0, 255).to(torch.uint8).contiguous(), valid


def footprints_of_boxes(boxes: torch.Tensor) -> torch.Tensor:
    """The photo squares that the cascade's R-Net/O-Net input boxes (already square) show: ``b`` is cut from
    ``b - 1`` to ``b`` inclusive, i.e. the square ``(x1 - 1, y1 - 1, x2, y2)``."""
    boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    return boxes - torch.tensor([1.0, 1.0, 0.0, 0.0])


# ---------------------------------------------------------------- candidate squares


def _inside(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    return (boxes[:, 0] >= 0) & (boxes[:, 1] >= 0) & (boxes[:, 2] <= width) & (boxes[:, 3] <= height)


def _max_iou(boxes: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Best IoU of each box over ``faces`` and that face's index (0 and -1 when there are no faces)."""
    if len(faces) == 0 or len(boxes) == 0:
        return np.zeros(len(boxes), np.float32), np.full(len(boxes), -1, np.int64)
    iou, best = box_iou(torch.as_tensor(boxes, dtype=torch.float32), torch.as_tensor(faces)).max(dim=1)
    return iou.numpy(), best.numpy()


def _random_squares(rng: np.random.Generator, count: int, min_side: int, max_side: int, width: int,
                    height: int) -> np.ndarray:
    """``count`` whole-pixel squares inside the photo, side uniform in [min_side, max_side]."""
    max_side = min(max_side, width, height)
    if count <= 0 or max_side < min_side:
        return np.zeros((0, 4), np.float32)
    side = rng.integers(min_side, max_side + 1, size=count)
    x1 = np.floor(rng.random(count) * (width - side + 1))
    y1 = np.floor(rng.random(count) * (height - side + 1))
    return np.stack([x1, y1, x1 + side, y1 + side], axis=1).astype(np.float32)


def _squares_near(rng: np.random.Generator, face: np.ndarray, count: int, min_side: int, max_side: int) -> np.ndarray:
    """Squares whose top-left corner lies within one side of the face's top-left corner (the reference
    implementations' "negatives near a face")."""
    if count <= 0 or max_side < min_side:
        return np.zeros((0, 4), np.float32)
    w, h = face[2] - face[0], face[3] - face[1]
    side = rng.integers(min_side, max_side + 1, size=count).astype(np.float32)
    x1 = np.floor(face[0] + rng.uniform(-side, w))
    y1 = np.floor(face[1] + rng.uniform(-side, h))
    return np.stack([x1, y1, x1 + side, y1 + side], axis=1).astype(np.float32)


def _jittered_squares(rng: np.random.Generator, face: np.ndarray, count: int, shift: float) -> np.ndarray:
    """Squares around a face (``SHIFT_SIDE_RANGE``, centre moved by up to ``shift`` × the face size)."""
    if count <= 0:
        return np.zeros((0, 4), np.float32)
    w, h = face[2] - face[0], face[3] - face[1]
    side = np.floor(rng.uniform(SHIFT_SIDE_RANGE[0] * min(w, h), SHIFT_SIDE_RANGE[1] * max(w, h), size=count))
    side = np.maximum(side, 1.0)
    cx = face[0] + w / 2 + rng.uniform(-shift, shift, size=count) * w
    cy = face[1] + h / 2 + rng.uniform(-shift, shift, size=count) * h
    x1, y1 = np.floor(cx - side / 2), np.floor(cy - side / 2)
    return np.stack([x1, y1, x1 + side, y1 + side], axis=1).astype(np.float32)


# ---------------------------------------------------------------- one photo


class _PhotoSamples:
    """Collects labelled footprints of one photo, then cuts them in one go."""

    def __init__(self, annotation: FaceAnnotation, image_index: int, stage: str):
        self.image_index, self.stage = image_index, stage
        self.faces = annotation.boxes[~annotation.ignore]
        self.face_points = annotation.landmarks[~annotation.ignore]
        self.all_faces = annotation.boxes  # ignore faces too: a crop on one of them is no negative
        self.parts: list[tuple[np.ndarray, np.ndarray, torch.Tensor, torch.Tensor]] = []

    def add_negatives(self, footprints: np.ndarray, limit: int | None, rng: np.random.Generator | None = None) -> None:
        iou_any, _ = _max_iou(footprints, self.all_faces)
        keep = np.flatnonzero(iou_any < NEGATIVE_IOU)
        if limit is not None and len(keep) > limit:
            keep = np.sort(rng.choice(keep, size=limit, replace=False)) if rng is not None else keep[:limit]
        self._add(footprints[keep], np.full(len(keep), NEGATIVE), torch.zeros(len(keep), 4),
                  torch.zeros(len(keep), 10))

    def add_faces(self, footprints: np.ndarray) -> None:
        """Positives and part faces among ``footprints``; the rest is dropped, and so is a crop overlapping an
        ignore face more than its best counted face."""
        iou, best = _max_iou(footprints, self.faces)
        iou_any, _ = _max_iou(footprints, self.all_faces)
        labels = np.where(iou >= POSITIVE_IOU, POSITIVE, np.where(iou >= PART_IOU, PART, NEGATIVE))
        keep = np.flatnonzero((iou >= PART_IOU) & (iou_any <= iou))
        chosen = torch.as_tensor(footprints[keep])
        targets = encode_boxes(chosen, torch.as_tensor(self.faces[best[keep]]).reshape(-1, 4), self.stage)
        self._add(footprints[keep], labels[keep], targets, torch.zeros(len(keep), 10))

    def add_landmarks(self, footprints: np.ndarray, face_index: int, limit: int) -> None:
        """Squares with IoU >= 0.65 with face ``face_index`` whose five points all fall inside."""
        if len(footprints) == 0 or limit <= 0:
            return
        face = torch.as_tensor(self.faces[face_index:face_index + 1])
        chosen = torch.as_tensor(footprints)
        iou = box_iou(chosen, face)[:, 0]
        points = torch.as_tensor(self.face_points[face_index]).expand(len(chosen), 5, 2)
        encoded = encode_landmarks(chosen, points)
        ok = (iou >= POSITIVE_IOU) & (encoded >= 0).all(1) & (encoded <= 1).all(1)
        keep = torch.nonzero(ok).flatten()[:limit]
        self._add(footprints[keep.numpy()], np.full(len(keep), LANDMARK),
                  encode_boxes(chosen[keep], face.expand(len(keep), 4), self.stage), encoded[keep])

    def _add(self, footprints, labels, box_targets, landmark_targets) -> None:
        if len(footprints):
            self.parts.append((np.asarray(footprints, np.float32).reshape(-1, 4), np.asarray(labels, np.int64),
                               box_targets.float(), landmark_targets.float()))

    def build(self, image: np.ndarray) -> MTCNNSamples:
        if not self.parts:
            return MTCNNSamples.empty(self.stage)
        footprints, labels, box_targets, landmark_targets = zip(*self.parts)
        footprints = torch.from_numpy(np.concatenate(footprints))
        crops, valid = cut_crops(image, footprints, STAGE_INPUT_SIZES[self.stage])
        return MTCNNSamples(self.stage, crops, torch.from_numpy(np.concatenate(labels))[valid],
                            torch.cat(box_targets)[valid], torch.cat(landmark_targets)[valid], footprints[valid],
                            torch.full((int(valid.sum()),), self.image_index, dtype=torch.int64))


def photo_samples(annotation: FaceAnnotation, image_index: int, stage: str, sampling: dict, seed: int,
                  with_landmarks: bool, proposals: torch.Tensor | None = None,
                  image: np.ndarray | None = None) -> MTCNNSamples:
    """The samples of one photo: random squares around and away from its faces, landmark crops when asked, and
    ``proposals`` (footprints of the earlier stages' boxes) as hard samples."""
    cfg = {**SAMPLING_DEFAULTS, **sampling}
    unknown = set(cfg) - set(SAMPLING_DEFAULTS)
    if unknown:
        raise ConfigError(f"unknown sampling keys {sorted(unknown)}; valid: {', '.join(SAMPLING_DEFAULTS)}")
    size = STAGE_INPUT_SIZES[stage]
    rng = np.random.default_rng([seed, image_index])
    image = read_image(annotation.image_path) if image is None else image
    height, width = image.shape[:2]
    photo = _PhotoSamples(annotation, image_index, stage)
    # Away from faces: 4× the wanted count is drawn, the first ones with IoU < 0.3 kept.
    wanted = cfg["negatives_per_image"]
    photo.add_negatives(_random_squares(rng, 4 * wanted, size, min(width, height) // 2, width, height), wanted)
    for index, face in enumerate(photo.faces):
        if min(face[2] - face[0], face[3] - face[1]) < max(cfg["min_face_size"], 1):
            continue
        near = _squares_near(rng, face, 4 * cfg["negatives_near_face"], size, min(width, height) // 2)
        photo.add_negatives(near[_inside(near, width, height)], cfg["negatives_near_face"])
        shifted = _jittered_squares(rng, face, cfg["shifted_per_face"], SHIFT_FRACTION)
        if stage == "pnet":  # P-Net only ever sees windows inside the photo's pyramid
            shifted = shifted[_inside(shifted, width, height)]
        photo.add_faces(shifted)
        if with_landmarks and np.isfinite(photo.face_points[index]).all():
            photo.add_landmarks(_jittered_squares(rng, face, 4 * cfg["landmarks_per_face"], LANDMARK_SHIFT_FRACTION),
                                index, cfg["landmarks_per_face"])
    if proposals is not None and len(proposals):
        footprints = torch.as_tensor(proposals, dtype=torch.float32).reshape(-1, 4).numpy()
        footprints = footprints[(footprints[:, 2] - footprints[:, 0]) >= 1]
        photo.add_faces(footprints)
        photo.add_negatives(footprints, cfg["hard_negatives_per_image"], rng)
    return photo.build(image)


def generate_samples(annotations: Sequence[FaceAnnotation], stage: str, sampling: dict | None = None, seed: int = 0,
                     proposer: Proposer | None = None, with_landmarks: bool | None = None,
                     progress: bool = False) -> MTCNNSamples:
    """Samples of every photo for ``stage`` (pnet / rnet / onet); ``proposer`` (the earlier stages run on a photo,
    returning footprints) adds hard samples. Landmark samples are made for O-Net unless ``with_landmarks`` says
    otherwise (P-Net and R-Net have no landmark head)."""
    if stage not in STAGE_INPUT_SIZES:
        raise ConfigError(f"stage must be one of {', '.join(STAGES)}, got {stage!r}")
    with_landmarks = stage == "onet" if with_landmarks is None else with_landmarks
    items = enumerate(annotations)
    if progress:
        from tqdm import tqdm
        items = tqdm(items, total=len(annotations), desc=f"{stage} samples", unit="photo", leave=False)
    parts = []
    for index, annotation in items:
        image = read_image(annotation.image_path)
        proposals = proposer(image) if proposer is not None else None
        parts.append(photo_samples(annotation, index, stage, sampling or {}, seed, with_landmarks, proposals, image))
    return MTCNNSamples.cat(parts, stage)


def describe(samples: MTCNNSamples) -> str:
    return ", ".join(f"{count} {name}" for name, count in samples.counts().items()) + f" ({samples.size} px)"


# ---------------------------------------------------------------- dataset

AUGMENTATION_DEFAULTS = {"flip_p": 0.5, "brightness": 0.125, "contrast": 0.2}


class MTCNNSampleDataset(Dataset):
    """Items ``(crop (3, S, S) uint8, label, box target (4,), landmark target (10,))``, optionally augmented
    (horizontal flip with the left/right landmark swap, brightness and contrast) with randomness drawn from
    (seed, epoch, index), so an epoch can be replayed exactly."""

    def __init__(self, samples: MTCNNSamples, augmentation: dict | None = None, seed: int = 0):
        self.samples = samples
        if augmentation is not None:
            unknown = set(augmentation) - set(AUGMENTATION_DEFAULTS)
            if unknown:
                raise ConfigError(f"unknown augmentation keys {sorted(unknown)}; valid: "
                                 f"{', '.join(AUGMENTATION_DEFAULTS)}")
            augmentation = {**AUGMENTATION_DEFAULTS, **augmentation}
        self.augmentation = augmentation
        self.flip_shifts = flip_shift(samples.crop_boxes, samples.stage) if len(samples) else torch.zeros(0)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        s = self.samples
        crop, label = s.crops[index], s.labels[index]
        boxes, points = s.box_targets[index], s.landmark_targets[index]
        if self.augmentation is not None:
            crop, boxes, points = self._augment(index, crop, label, boxes, points)
        return crop, label, boxes, points

    def _augment(self, index: int, crop: torch.Tensor, label: torch.Tensor, boxes: torch.Tensor, points: torch.Tensor):
        cfg = self.augmentation
        rng = np.random.default_rng([self.seed, self.epoch, index])
        flip, gain, bias = rng.random() < cfg["flip_p"], rng.uniform(-1, 1), rng.uniform(-1, 1)
        if flip:
            crop = crop.flip(-1)
            if int(label) in (POSITIVE, PART, LANDMARK):
                boxes, points = flip_targets(boxes, points, self.flip_shifts[index])
            if int(label) != LANDMARK:
                points = torch.zeros_like(points)
        if cfg["brightness"] or cfg["contrast"]:
            pixels = crop.float()
            mean = pixels.mean()
            pixels = (pixels - mean) * (1 + cfg["contrast"] * gain) + mean + 255 * cfg["brightness"] * bias
            crop = pixels.round().clamp(0, 255).to(torch.uint8)
        return crop, boxes, points


def collate_samples(batch):
    """→ (crops (B, 3, S, S) uint8, labels (B,) int64, box targets (B, 4), landmark targets (B, 10))."""
    crops, labels, boxes, points = zip(*batch)
    return torch.stack(crops), torch.stack(labels), torch.stack(boxes), torch.stack(points)


__all__ = [
    "AUGMENTATION_DEFAULTS", "LABEL_NAMES", "LANDMARK", "MTCNNSampleDataset", "MTCNNSamples", "NEGATIVE",
    "NEGATIVE_IOU", "PART", "PART_IOU", "POSITIVE", "POSITIVE_IOU", "SAMPLING_DEFAULTS", "STAGES",
    "STAGE_INPUT_SIZES", "collate_samples", "cut_crops", "decode_boxes", "describe", "encode_boxes",
    "encode_landmarks", "flip_shift", "flip_targets", "footprints_of_boxes", "generate_samples", "photo_samples",
    "reference_boxes",
]
