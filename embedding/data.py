"""Identity-folder data for embedding training: ``root/<identity>/<image>`` (the VGGFace2 / CASIA-WebFace layout).

Training reads small aligned chips, never the source photos: ``prepare_chips`` turns each source image into one
chip once and caches it on disk, so epochs do not decode large photos or re-detect faces. Two ways to make a chip:

* ``align: none`` — the images already are aligned face chips (a pre-aligned VGGFace2/CASIA release): the central
  ``crop_fraction`` of the image is resized to the chip size (1.0 = the whole image).
* ``align: mtcnn`` — MTCNN finds the face (the one whose box centre is nearest the photo centre: the subject of an
  identity-folder photo is centred) and the 5 landmarks are warped onto the alignment template
  (``embedding.embedder.Alignment``), exactly as an ``Embedder`` cuts chips at test time.

Unreadable images and photos without a face are skipped, counted, and listed in the cache's ``skipped.tsv`` so a
second ``prepare`` does not retry them. ``PKSampler`` draws P identities × K images per batch.
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import albumentations as A
import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, Sampler
from tqdm import tqdm

from common.io import IMAGE_EXTENSIONS, ImageReadError, read_image
from embedding.embedder import Alignment
from common.errors import UserError

ALIGN_MODES = ("none", "mtcnn")
SKIPPED_FILE = "skipped.tsv"
CHIP_SUFFIX = ".png"  # lossless: chips are decoded every epoch and must not drift
DETECT_BATCH = 16  # photos per MTCNN call while preparing

DEFAULT_AUGMENTATION = {"flip_p": 0.5, "brightness": 0.2, "contrast": 0.2, "colour_p": 0.5, "blur_limit": 3,
                        "blur_p": 0.1}


class DatasetError(UserError, ValueError):
    pass


# ---- identity folders ------------------------------------------------------------------------------------
def scan_identity_folders(root: str | Path, identities: Sequence[str] | None = None) -> dict[str, list[Path]]:
    """``{identity: sorted image paths}`` for ``root/<identity>/<image>``. With ``identities`` only those are read,
    and each must have a folder with images. Without it, identity folders holding no image are left out."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"identity-folder root {root} is not a folder (expected root/<identity>/<image>)")
    names = sorted(identities) if identities is not None else sorted(p.name for p in root.iterdir() if p.is_dir())
    if not names:
        raise DatasetError(f"{root} holds no identity folders (expected root/<identity>/<image>)")
    found, empty = {}, []
    for name in names:
        folder = root / name
        images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()) \
            if folder.is_dir() else []
        if images:
            found[name] = images
        else:
            empty.append(name)
    if identities is not None and empty:
        raise DatasetError(f"{len(empty)} requested identities have no images under {root}: "
                           f"{', '.join(empty[:10])}{' ...' if len(empty) > 10 else ''}")
    if not found:
        raise DatasetError(f"no identity folder under {root} holds an image ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    return found


def split_identities(identities: Sequence[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(train, val) identity lists, identity-disjoint, by a seeded shuffle."""
    names = sorted(identities)
    random.Random(seed).shuffle(names)
    count = int(round(len(names) * val_fraction))
    return sorted(names[count:]), sorted(names[:count])


# ---- chips -----------------------------------------------------------------------------------------------
def center_crop_chip(image: np.ndarray, size: int, crop_fraction: float) -> np.ndarray:
    """The central ``crop_fraction`` of a photo's shorter side, resized to ``size``×``size``."""
    height, width = image.shape[:2]
    side = max(1, int(round(min(height, width) * crop_fraction)))
    top, left = (height - side) // 2, (width - side) // 2
    crop = image[top:top + side, left:left + side]
    interpolation = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    return cv2.resize(crop, (size, size), interpolation=interpolation)



def cache_folder(cache_dir: str | Path, align: str, alignment: Alignment, crop_fraction: float) -> Path:
    """The chip cache of one way of making chips; different settings never share a folder."""
    if align == "mtcnn":
        key = f"mtcnn-{alignment.key}"
    else:
        key = f"resize-{alignment.size}px-crop{crop_fraction:g}"
    return Path(cache_dir) / key


@dataclass
class PrepareReport:
    chips: int = 0
    made: int = 0
    unreadable: int = 0
    no_face: int = 0
    skipped_files: dict[str, str] = field(default_factory=dict)


def _chip_path(folder: Path, identity: str, source: Path) -> Path:
    return folder / identity / (source.stem + CHIP_SUFFIX)


def _read_skipped(folder: Path) -> dict[str, str]:
    path = folder / SKIPPED_FILE
    if not path.is_file():
        return {}
    return dict(line.split("\t", 1) for line in path.read_text(encoding="utf-8").splitlines() if "\t" in line)


def prepare_chips(images: dict[str, list[Path]], cache: Path, align: str, alignment: Alignment,
                  crop_fraction: float = 1.0, detector=None, show_progress: bool = True
                  ) -> tuple[dict[str, list[Path]], PrepareReport]:
    """Make the missing chips of ``images`` ({identity: source paths}) under ``cache``; returns
    ({identity: chip paths} of identities with at least one chip, report). ``detector`` (with
    ``.detect(list of RGB uint8) -> list[Detections]``) is needed for ``align='mtcnn'`` while chips are missing."""
    if align not in ALIGN_MODES:
        raise DatasetError(f"data.align must be one of {', '.join(ALIGN_MODES)}, got {align!r}")
    cache.mkdir(parents=True, exist_ok=True)
    skipped = _read_skipped(cache)
    report = PrepareReport(skipped_files=skipped)
    todo = [(identity, source) for identity, sources in images.items() for source in sources
            if str(source) not in skipped and not _chip_path(cache, identity, source).is_file()]
    if todo and align == "mtcnn" and detector is None:
        raise DatasetError(f"align: mtcnn needs a face detector to make {len(todo)} missing chips in {cache}")
    bar = tqdm(total=len(todo), desc=f"preparing chips ({align})", disable=not show_progress or not todo)
    for start in range(0, len(todo), DETECT_BATCH):
        batch, photos = [], []
        for identity, source in todo[start:start + DETECT_BATCH]:
            try:
                photos.append(read_image(source))
                batch.append((identity, source))
            except ImageReadError as error:
                skipped[str(source)] = f"unreadable: {error}"
                report.unreadable += 1
        if align == "mtcnn" and photos:
            chips = []
            for photo, detections in zip(photos, detector.detect(photos)):
                face = detections.nearest_to_centre(*photo.shape[:2])
                chips.append(None if face is None else alignment.align(photo, detections.landmarks[face:face + 1])[0])
        else:
            chips = [center_crop_chip(photo, alignment.size, crop_fraction) for photo in photos]
        for (identity, source), chip in zip(batch, chips):
            if chip is None:
                skipped[str(source)] = "no face found"
                report.no_face += 1
                continue
            target = _chip_path(cache, identity, source)
            target.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(target), cv2.cvtColor(chip, cv2.COLOR_RGB2BGR))
            report.made += 1
        bar.update(len(todo[start:start + DETECT_BATCH]))
    bar.close()
    (cache / SKIPPED_FILE).write_text("".join(f"{path}\t{reason}\n" for path, reason in sorted(skipped.items())),
                                      encoding="utf-8")
    chips = {}
    for identity, sources in images.items():
        made = [_chip_path(cache, identity, s) for s in sources if str(s) not in skipped]
        if made:
            chips[identity] = made
    report.chips = sum(len(paths) for paths in chips.values())
    report.skipped_files = skipped
    return chips, report


# ---- dataset ---------------------------------------------------------------------------------------------
def build_augmentation(cfg: dict) -> A.Compose:
    """Horizontal flip, small brightness/contrast jitter and a light blur: a chip's geometry must stay aligned."""
    return A.Compose([
        A.HorizontalFlip(p=cfg["flip_p"]),
        A.RandomBrightnessContrast(brightness_limit=cfg["brightness"], contrast_limit=cfg["contrast"],
                                   p=cfg["colour_p"]),
        A.Blur(blur_limit=(3, max(3, cfg["blur_limit"])), p=cfg["blur_p"]),
    ])


class IdentityFolderDataset(Dataset):
    """Aligned chips with integer labels. ``chips`` maps identity → chip paths (from ``prepare_chips``); labels
    follow the sorted identity names. Items are ``(chip (3, S, S) uint8 tensor, label)``.

    An item index may come as ``(index, draw_key)`` from ``PKSampler``: augmentation is seeded by
    (seed, epoch, draw_key), so an epoch replays exactly and an image drawn twice in a batch is augmented twice."""

    def __init__(self, chips: dict[str, list[Path]], augmentation: dict | None = None, seed: int = 0):
        if not chips:
            raise DatasetError("no identities with images to train on")
        self.identities = sorted(chips)
        self.paths: list[Path] = []
        self.labels: list[int] = []
        for label, identity in enumerate(self.identities):
            self.paths.extend(chips[identity])
            self.labels.extend([label] * len(chips[identity]))
        self.transform = build_augmentation(augmentation) if augmentation is not None else None
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, item):
        index, draw_key = item if isinstance(item, tuple) else (item, item)
        chip = read_image(self.paths[index])
        if self.transform is not None:
            self.transform.set_random_seed(_seed32(self.seed, self.epoch, draw_key))
            chip = self.transform(image=chip)["image"]
        return torch.from_numpy(np.ascontiguousarray(chip)).permute(2, 0, 1), self.labels[index]


def _seed32(*parts) -> int:
    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=4).digest(), "little")


def collate_chips(batch):
    """→ (chips (B, 3, S, S) uint8, labels (B,) int64)."""
    chips, labels = zip(*batch)
    return torch.stack(chips), torch.tensor(labels, dtype=torch.int64)


# ---- P×K sampling ----------------------------------------------------------------------------------------
class PKSampler(Sampler):
    """Batches of P identities × K images each, as lists of ``(dataset index, draw key)``.

    Only identities with at least ``min_images`` (≥ 2: a triplet needs a positive) images take part. An identity
    with fewer than K images gives each of its images once and the rest of its K slots drawn with replacement (they
    repeat within the batch, each augmented differently) when ``fewer_than_k='replace'``, or left out when
    ``'skip'``. Each epoch shuffles the identities with a generator seeded by (seed, epoch); under DDP every rank
    takes a disjoint shard (identities[rank::world], cut to the same length on every rank so all ranks run the same
    number of steps). One epoch visits every identity of the shard once: len = shard size // P batches.
    """

    def __init__(self, labels: Sequence[int], identities_per_batch: int, images_per_identity: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1, fewer_than_k: str = "replace", min_images: int = 2):
        if identities_per_batch < 2 or images_per_identity < 2:
            raise DatasetError(f"P×K sampling needs P ≥ 2 identities and K ≥ 2 images per identity, got "
                               f"P={identities_per_batch}, K={images_per_identity}")
        if fewer_than_k not in ("replace", "skip"):
            raise DatasetError(f"fewer_than_k must be 'replace' or 'skip', got {fewer_than_k!r}")
        groups: dict[int, list[int]] = {}
        for index, label in enumerate(labels):
            groups.setdefault(int(label), []).append(index)
        least = images_per_identity if fewer_than_k == "skip" else max(2, min_images)
        self.groups = [groups[label] for label in sorted(groups) if len(groups[label]) >= least]
        self.p, self.k = identities_per_batch, images_per_identity
        self.seed, self.rank, self.world_size, self.epoch = seed, rank, world_size, 0
        self.shard_size = len(self.groups) // world_size
        if self.shard_size < self.p:
            raise DatasetError(f"P×K sampling: {len(self.groups)} identities have ≥ {least} images, which gives each "
                               f"of {world_size} process(es) {self.shard_size}, fewer than P={self.p}")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.shard_size // self.p

    def __iter__(self):
        generator = torch.Generator().manual_seed(_seed32(self.seed, self.epoch))
        order = torch.randperm(len(self.groups), generator=generator).tolist()
        shard = order[self.rank::self.world_size][:self.shard_size]
        for batch_index in range(len(self)):
            batch = []
            for group in shard[batch_index * self.p:(batch_index + 1) * self.p]:
                members = self.groups[group]
                if len(members) >= self.k:
                    picks = torch.randperm(len(members), generator=generator)[:self.k]
                else:  # every image once, the rest of the K drawn with replacement
                    picks = torch.cat([torch.randperm(len(members), generator=generator),
                                       torch.randint(len(members), (self.k - len(members),), generator=generator)])
                batch.extend(members[i] for i in picks.tolist())
            keys = [(self.rank, batch_index, slot) for slot in range(len(batch))]
            yield list(zip(batch, keys))
