"""Teacher → student labels: the fused pretrained detectors label unlabelled photos, cached in the run folder.

The teacher is injected (``pipeline.training.teacher_from_config`` builds the fusion detector of
``teacher_config``, configs/pipeline.yaml: BlazeFace + MTCNN, calibrated, weighted box fusion, with RetinaFace
added when ``add_retinaface`` is set and its weights exist). Every face the
teacher finds scoring at least ``ignore_threshold`` is cached with its score, so the thresholds can change without
relabelling; faces scoring ``keep_threshold`` or more become training faces, those in between ``ignore`` regions
(neither face nor background). With three teachers and weighted box fusion a face seen by one of them scores about
a third of its score, so the default keep threshold asks for two to agree.

The cache (JSON) is rewritten atomically every ``save_every`` photos; a rerun, or a resumed training, labels only
the photos missing from it.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

from common.config import ConfigError
from common.io import IMAGE_EXTENSIONS, list_images, read_image
from detection.data.readers import NUM_LANDMARKS, FaceAnnotation

PSEUDO_DEFAULTS = {"teacher_config": "configs/pipeline.yaml", "teacher_set": [], "add_retinaface": True,
                   "retinaface_config": "configs/detection_retinaface.yaml", "keep_threshold": 0.6,
                   "ignore_threshold": 0.25, "cache": "pseudo_labels.json", "device": "cpu", "save_every": 50}
PSEUDO_LABEL_SOURCES = ("fusion",)


def collect_images(sources: list, max_images: int = 0, seed: int = 42) -> list[Path]:
    """Image files given by name, and the images under folders (recursively), sorted; ``max_images`` > 0 keeps a
    seeded random subset of that many of the folders' images (files given by name are always kept)."""
    if not sources:
        raise ConfigError("pseudo-labels need unlabelled photos: pass --images DIR (data.images)")
    named, found = set(), set()
    for source in map(Path, sources):
        if source.is_file() and source.suffix.lower() in IMAGE_EXTENSIONS:
            named.add(source)
        elif source.is_dir():
            found.update(list_images(source))
        else:
            raise FileNotFoundError(f"data.images: {source} is neither an image nor a folder")
    found = sorted(found - named)
    if 0 < max_images < len(found):
        chosen = np.random.default_rng(seed).choice(len(found), max_images, replace=False)
        found = [found[index] for index in chosen]
    ordered = sorted(named | set(found))
    if not ordered:
        raise ConfigError(f"data.images: no images found in {', '.join(map(str, sources))}")
    return ordered


def _write_cache(path: Path, teacher: list[str], labels: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(json.dumps({"teacher": teacher, "labels": labels}), encoding="utf-8")
    temporary.replace(path)


def read_cache(path: Path) -> tuple[list[str] | None, dict]:
    if not path.is_file():
        return None, {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data["teacher"], data["labels"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ConfigError(f"{path} is not a pseudo-label cache ({error}); delete it to relabel") from None


def pseudo_label(paths: list[Path], section: dict, cache_path: Path, teacher_factory) -> dict:
    """{image path: [{"box", "score", "landmarks"}, ...]} for ``paths``, from the cache where it has them and from
    the teacher ``teacher_factory(section)`` → (photo detector, its detectors' names), built only when some photo
    is missing, for the rest."""
    cached_teacher, labels = read_cache(cache_path)
    missing = [path for path in paths if str(path) not in labels]
    if missing:
        teacher, names = teacher_factory(section)
        if cached_teacher is not None and cached_teacher != names:
            raise ConfigError(f"{cache_path} was labelled by {cached_teacher}, the teacher is now {names}; delete "
                              "it (or set pseudo.cache to another file) to relabel")
        for count, path in enumerate(tqdm(missing, desc=f"pseudo-labelling ({'+'.join(names)})", unit="photo"), 1):
            found = teacher.detect([read_image(path)])[0]
            labels[str(path)] = found[found.scores >= section["ignore_threshold"]].to_json()
            if count % section["save_every"] == 0:
                _write_cache(cache_path, names, labels)
        _write_cache(cache_path, names, labels)
    return {str(path): labels[str(path)] for path in paths}


def annotations_from_labels(labels: dict, keep_threshold: float, ignore_threshold: float) -> list[FaceAnnotation]:
    """Cached labels → one ``FaceAnnotation`` per photo: faces ≥ ``keep_threshold``, and ``ignore`` ones between the
    thresholds. Photos without faces stay (they teach background)."""
    annotations = []
    for path, faces in labels.items():
        faces = [face for face in faces if face["score"] >= ignore_threshold]
        boxes = np.array([face["box"] for face in faces], dtype=np.float32).reshape(-1, 4)
        landmarks = np.array([face["landmarks"] for face in faces], dtype=np.float32).reshape(-1, NUM_LANDMARKS, 2)
        ignore = np.array([face["score"] < keep_threshold for face in faces], dtype=bool)
        annotations.append(FaceAnnotation(Path(path), boxes, landmarks, ignore))
    return annotations
