"""Embed a list of image files for verification: detect, pick the central face, align, embed, cache on disk.

Per image: the detector's face nearest the image centre (LFW photos are centred on their subject) is aligned by
its 5 landmarks; an image without a detected face falls back to a margin crop of a fixed central box and is
counted (``no_face``). With ``jitter=N`` (N > 1; 0 and 1 mean none, as dlib's ``num_jitters``) each chip is
embedded as N randomly jittered copies (dlib's ``jitter_image``: shift ±2 %, zoom out 0–3 %, rotate ±3°, mirror
half the time) whose embeddings are averaged and re-normalised.

Embeddings are cached in one ``.npz`` per (embedder cache key, detector, jitter) in ``cache_dir``
(default ``~/.cache/facepipe/embeddings``), and the central face's landmarks in one per detector (so another
embedder or jitter setting skips detection); an entry is reused while the image file keeps its path, size and
modification time, so a rerun loads instead of recomputing.
"""
from __future__ import annotations

import hashlib
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
from tqdm import tqdm

from common.io import read_image
from embedding.fusion import FusedEmbedder

DEFAULT_CACHE_DIR = Path("~/.cache/facepipe/embeddings")
# Fallback face box as fractions (x1, y1, x2, y2) of the image: the median MTCNN box of 64 random LFW images.
FALLBACK_BOX_FRACTIONS = (0.32, 0.26, 0.69, 0.75)
CHUNK = 32  # images read, detected and embedded together
# dlib's jitter_image: translation fraction, zoom-out range, rotation degrees, mirror probability.
JITTER_SHIFT = 0.02
JITTER_ZOOM = (0.97, 1.0)
JITTER_DEGREES = 3.0
JITTER_FLIP = 0.5
JITTER_SEED = 0


@dataclass
class EmbeddedImages:
    embeddings: np.ndarray  # (N, D) float32, L2-normalised
    no_face: np.ndarray  # (N,) bool: no face detected, the fallback crop was embedded
    computed: int  # how many were computed now (the rest came from the cache)



def fallback_box(height: int, width: int) -> np.ndarray:
    """(1, 4) float32 xyxy central box used when no face is detected."""
    return (np.array(FALLBACK_BOX_FRACTIONS, dtype=np.float32) * np.array([width, height, width, height],
                                                                          dtype=np.float32))[None]


def jitter_chips(chips: np.ndarray, copies: int, rng: np.random.Generator) -> np.ndarray:
    """(N * copies, S, S, 3) uint8: ``copies`` random jitters of each of the (N, S, S, 3) chips, chip-major."""
    count, size = len(chips), chips.shape[1]
    out = np.empty((count * copies, size, size, 3), dtype=np.uint8)
    centre = (size - 1) / 2
    for index in range(count * copies):
        shift = rng.uniform(-JITTER_SHIFT, JITTER_SHIFT, 2) * size
        zoom = rng.uniform(*JITTER_ZOOM)  # < 1 zooms out: the crop is 1/zoom times the chip
        matrix = cv2.getRotationMatrix2D((centre, centre), rng.uniform(-JITTER_DEGREES, JITTER_DEGREES), zoom)
        matrix[:, 2] -= matrix[:, :2] @ shift  # sample around centre + shift
        chip = cv2.warpAffine(chips[index // copies], matrix, (size, size), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        out[index] = chip[:, ::-1] if rng.random() < JITTER_FLIP else chip
    return out


def file_stamp(path: Path) -> str:
    status = path.stat()
    return f"{path.resolve()}|{status.st_size}|{status.st_mtime_ns}"


class RecordCache:
    """Per-image records (fixed-shape arrays by field name) of one ``setting``, keyed by the image's stamp
    (path, size, mtime), in one ``.npz`` under ``cache_dir`` (None: in memory only)."""

    def __init__(self, cache_dir: str | Path | None, setting: str, fields: Sequence[str]):
        digest = hashlib.sha1(setting.encode()).hexdigest()[:16]
        self.path = Path(cache_dir).expanduser() / f"{digest}.npz" if cache_dir is not None else None
        self.setting, self.fields = setting, tuple(fields)
        self.entries: dict[str, dict[str, np.ndarray]] = {}
        self.dirty = False
        if self.path is not None and self.path.is_file():
            with np.load(self.path, allow_pickle=False) as data:
                if str(data["setting"]) == setting:
                    columns = [data[field] for field in self.fields]
                    self.entries = {stamp: dict(zip(self.fields, values))
                                    for stamp, *values in zip(data["stamps"].tolist(), *columns)}

    def get(self, stamp: str) -> dict[str, np.ndarray] | None:
        return self.entries.get(stamp)

    def put(self, stamp: str, **record: np.ndarray) -> None:
        self.entries[stamp] = {field: np.asarray(record[field]) for field in self.fields}
        self.dirty = True

    def save(self) -> None:
        if self.path is None or not self.dirty:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        stamps = list(self.entries)
        temporary = self.path.with_suffix(f".tmp{os.getpid()}.npz")
        np.savez(temporary, setting=np.array(self.setting), stamps=np.array(stamps),
                 **{field: np.stack([self.entries[stamp][field] for stamp in stamps]) for field in self.fields})
        os.replace(temporary, self.path)
        self.dirty = False


def detect_central_faces(stamps: Sequence[str], images: Sequence[np.ndarray], detector,
                         cache: RecordCache) -> list[np.ndarray | None]:
    """(5, 2) landmarks of each image's central face, or None; detections come from ``cache`` when it has them
    (stored as NaN landmarks for "no face") and are added to it otherwise."""
    missing = [index for index, stamp in enumerate(stamps) if cache.get(stamp) is None]
    if missing:
        for index, found in zip(missing, detector.detect([images[index] for index in missing])):
            height, width = images[index].shape[:2]
            face = found.nearest_to_centre(height, width)
            landmarks = (found.landmarks[face].detach().cpu().numpy() if face is not None else
                         np.full((5, 2), np.nan))
            cache.put(stamps[index], landmarks=landmarks.astype(np.float32))
    landmarks = [cache.get(stamp)["landmarks"] for stamp in stamps]
    return [None if np.isnan(points).any() else points for points in landmarks]


def _chips(images: Sequence[np.ndarray], landmarks: Sequence[np.ndarray | None], alignment) -> np.ndarray:
    """(N, S, S, 3) chips: aligned by the landmarks, or the fallback crop where there are none."""
    chips = []
    for image, points in zip(images, landmarks):
        height, width = image.shape[:2]
        chips.append(alignment.crop(image, fallback_box(height, width)) if points is None else
                     alignment.align(image, points[None]))
    return np.concatenate(chips)


def _embed(embedder, chips: np.ndarray, stamps: Sequence[str], jitter: int) -> np.ndarray:
    if jitter <= 1:
        return embedder.embed_chips(chips).numpy()
    # One generator per image, seeded by its path: the jitter of an image does not depend on its batch.
    copies = np.concatenate([jitter_chips(chip[None], jitter, np.random.default_rng(
        [JITTER_SEED, zlib.crc32(stamp.split("|")[0].encode())])) for chip, stamp in zip(chips, stamps)])
    mean = embedder.embed_chips(copies).numpy().reshape(len(chips), jitter, -1).mean(1)  # (N, D)
    return mean / np.linalg.norm(mean, axis=1, keepdims=True)


def embed_images(paths: Sequence[str | Path], embedder, detector, detector_key: str, jitter: int = 0,
                 cache_dir: str | Path | None = DEFAULT_CACHE_DIR, chunk: int = CHUNK,
                 progress: bool = True) -> EmbeddedImages:
    """Embeddings of ``paths`` (duplicates are embedded once), loading what the cache already holds. A fused
    embedder's members are embedded (and cached) one by one, then fused. ``detector_key`` names what the faces
    depend on (``pipeline.build.detector_cache_key``: the detector's config, files and code): the faces and the
    embeddings made from them are cached under it."""
    if isinstance(embedder, FusedEmbedder):
        parts = [embed_images(paths, member, detector, detector_key, jitter, cache_dir, chunk, progress)
                 for member in embedder.members]
        return EmbeddedImages(embedder.fuse([part.embeddings for part in parts]), parts[0].no_face,
                              sum(part.computed for part in parts))
    paths = [Path(path) for path in paths]
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"image not found: {path}")
    stamps = [file_stamp(path) for path in paths]
    cache = RecordCache(cache_dir, f"{embedder.cache_key}|detector={detector_key}|jitter={jitter}",
                        ("embedding", "no_face"))
    faces = RecordCache(cache_dir, f"faces|detector={detector_key}", ("landmarks",))
    unique_paths = dict(zip(stamps, paths))  # duplicates collapse, order kept
    todo = [stamp for stamp in unique_paths if cache.get(stamp) is None]
    try:
        with tqdm(total=len(todo), desc=f"embedding ({embedder.name}, {detector_key.split('@')[0]})", unit="img",
                  disable=not progress or not todo) as bar:
            for start in range(0, len(todo), chunk):
                batch = todo[start:start + chunk]
                images = [read_image(unique_paths[stamp]) for stamp in batch]
                landmarks = detect_central_faces(batch, images, detector, faces)
                embeddings = _embed(embedder, _chips(images, landmarks, embedder.alignment), batch, jitter)
                for stamp, embedding, points in zip(batch, embeddings, landmarks):
                    cache.put(stamp, embedding=embedding.astype(np.float32), no_face=np.bool_(points is None))
                bar.update(len(batch))
    finally:
        faces.save()
        cache.save()
    embeddings = np.stack([cache.get(stamp)["embedding"] for stamp in stamps]).astype(np.float32)
    no_face = np.array([bool(cache.get(stamp)["no_face"]) for stamp in stamps], dtype=bool)
    return EmbeddedImages(embeddings, no_face, len(todo))
