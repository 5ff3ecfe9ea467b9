"""The composition root: the one place that builds detectors and embedders from a name and a config.

``infer.py``, every ``evaluate.py`` benchmark, the training stages, YOLO's pseudo-label teacher and the classroom
product all build through here. Importing this module imports the ``detection`` and ``embedding`` packages, which
register their detectors, embedders and networks (``common.registry``); the fused detector (``fusion``) is
composed here from the detectors the pipeline config names.
"""
from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Sequence

from tqdm import tqdm

import detection  # noqa: F401  (registers every detector)
import embedding  # noqa: F401  (registers every embedder)
from common.checkpoint import CheckpointError
from common.config import PROJECT_ROOT, ConfigError, load_yaml, project_path
from common.engine import resolve_device
from common.registry import DETECTORS, EMBEDDERS, MODELS
from detection.retinaface.config import resolve_weights
from embedding.embedder import Embedder
from embedding.fusion import SEPARATOR, FusedEmbedder, member_names
from embedding.routing import SizeRoutedEmbedder
from embedding.training import embedder_from_checkpoint, training_identities
from fusion.calibration import ScoreCalibrator
from fusion.detector import FusionDetector
from fusion.merge import FusionSettings
from pipeline.config import DETECTOR_ENTRY, FUSION, default_config_path, detection_config, pipeline_config


EMBEDDER_FUSION_CONFIG = PROJECT_ROOT / "configs" / "embedder_fusion.yaml"


def list_detectors() -> list[str]:
    """Every detector name ``build_detector`` takes, ``fusion`` (the pipeline config's detectors merged) included."""
    return sorted([*DETECTORS.names(), FUSION])


def list_embedders() -> list[str]:
    return EMBEDDERS.names()


def list_models() -> list[str]:
    """Every registered network (``common.registry.build_model``)."""
    return MODELS.names()


def detector_from_config(cfg: dict, device: str = "cpu"):
    """The photo detector (``detect(list of RGB uint8 arrays) -> list[Detections]``) a detector config describes."""
    build = fusion_from_config if cfg["detector"] == FUSION else DETECTORS.get(cfg["detector"]).from_config
    return build(cfg, str(resolve_device(device)))


def build_detector(name: str, config: str | Path | None = None, device: str = "cpu", set_items: Sequence[str] = (),
                   **overrides):
    """A ready photo detector: ``name``'s config (``config``, default ``configs/detection_<name>.yaml`` or
    ``configs/pipeline.yaml`` for ``fusion``) with ``overrides`` (dotted keys, e.g.
    ``**{"inference.score_threshold": 0.5}``) and ``set_items`` (``key=value`` strings) on top."""
    cfg = detection_config(name, config if config is not None else default_config_path(name), overrides, set_items)
    return detector_from_config(cfg, device)


# the code a detector's faces depend on: its package and everything it builds on
DETECTOR_CODE = ("common", "detection", "fusion")
BUILT_FROM = ("detector", "model", "inference")  # the config sections a photo detector is made from
KEY_DIGITS = 16


@lru_cache(maxsize=64)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _content_digest(path: Path) -> str:
    status = path.stat()
    return _file_digest(str(path.resolve()), status.st_size, status.st_mtime_ns)


@lru_cache(maxsize=1)
def detector_code_digest() -> str:
    """sha1 of the source of every package a detector is made of (``DETECTOR_CODE``)."""
    digest = hashlib.sha1()
    for path in sorted(path for package in DETECTOR_CODE for path in (PROJECT_ROOT / package).rglob("*.py")):
        digest.update(str(path.relative_to(PROJECT_ROOT)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _with_file_digests(value):
    """A config with every string that names an existing file followed by the file's content digest."""
    if isinstance(value, dict):
        return {key: _with_file_digests(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_with_file_digests(item) for item in value]
    if isinstance(value, str) and value:
        path = project_path(value)
        if path.is_file():
            return f"{value}#{_content_digest(path)}"
    return value


def detector_cache_key(name: str, config: str | Path | None = None, set_items: Sequence[str] = ()) -> str:
    """``name@digest``: what the faces a detector finds depend on — its effective config (thresholds, tiling, sizes,
    for ``fusion`` each member's and its calibration), the content of every file that config names (weights,
    calibration), and the code of the packages detectors are made of. Caches of detected faces (landmarks, and the
    embeddings made from them) are keyed on it, so a change to any of these recomputes them instead of reusing stale
    faces."""
    def sections(detector_cfg: dict) -> dict:
        return {key: detector_cfg[key] for key in BUILT_FROM if key in detector_cfg}

    cfg = detection_config(name, config if config is not None else default_config_path(name), set_items=set_items)
    if name == FUSION:
        members = {member: sections(fused_detector_config(member, entry, cfg["inference"]["min_face_px"]))
                   for member, entry in fused_entries(cfg).items()}
        cfg = {"pipeline": {key: cfg[key] for key in ("detection", "inference")}, "members": members}
    else:
        cfg = sections(cfg)
    described = json.dumps(_with_file_digests(cfg), sort_keys=True, default=str)
    digest = hashlib.sha1(f"{described}|{detector_code_digest()}".encode()).hexdigest()[:KEY_DIGITS]
    return f"{name}@{digest}"


def checkpoint_identities(weights) -> set[str] | None:
    """The identities a checkpoint of our embedding training saw, or None for other weights (published ones)."""
    try:
        return training_identities(weights)
    except CheckpointError:
        return None


def embedder_fusion_weights(name: str) -> list[float]:
    """The member weights ``configs/embedder_fusion.yaml`` holds for the fusion ``name`` (fitted on LFW View 1 by
    ``python -m pipeline.embedder_fusion``); equal weights, the plain average of the members' cosines, where it
    has none."""
    members = member_names(name)
    fitted = (load_yaml(EMBEDDER_FUSION_CONFIG).get("fusions") or {}) if EMBEDDER_FUSION_CONFIG.is_file() else {}
    weights = fitted.get(name)
    if weights is None:
        return [1.0] * len(members)
    if sorted(weights) != sorted(members):
        raise ConfigError(f"{EMBEDDER_FUSION_CONFIG}: fusions.{name} must give a weight to each of {members}, "
                          f"got {sorted(weights)}")
    return [float(weights[member]) for member in members]


def build_embedder(name: str, weights: str | Path | None = None, device: str = "cpu", flip: bool = False,
                   align: str | None = None) -> Embedder | FusedEmbedder:
    """The embedder ``name`` with ``weights`` (None: its published weights); a checkpoint of our embedding training
    is loaded as the network it records. ``flip``: test-time flip (each face embedded with its mirror image);
    ``align``: dlib_resnet's chip alignment (its default if None). ``a+b+c`` names a score-level fusion of
    registered embedders (``embedding.fusion``) with the weights of ``embedder_fusion_weights``."""
    if SEPARATOR in name:
        if weights is not None or align is not None:
            raise ConfigError(f"weights and align apply to one embedder, not to the fusion {name}")
        members = [build_embedder(member, device=device, flip=flip) for member in member_names(name)]
        return FusedEmbedder(members, embedder_fusion_weights(name))
    EMBEDDERS.get(name)
    if weights is not None and checkpoint_identities(weights):
        embedder = embedder_from_checkpoint(weights, str(resolve_device(device)))
    else:
        embedder = EMBEDDERS.get(name)(weights=weights, device=str(resolve_device(device)),
                                       **({"align": align} if align else {}))
    embedder.flip = flip
    return embedder


# ---------------------------------------------------------------- the fused detector

def fused_detector_config(name: str, entry: dict, min_face_px: float | None, calibrating: bool = False) -> dict:
    """The config of one of the fused detectors: its own config file with the pipeline's ``min_face_px`` (for a
    detector that takes one; None: each detector's own), the entry's ``set`` items, and while fitting score
    calibration its ``calibration_set`` (thresholds loose enough to make misses)."""
    if name == FUSION or name not in DETECTORS:
        raise ConfigError(f"detection.detectors: unknown detector {name!r}; choose from {', '.join(DETECTORS)}")
    config = entry["config"]
    path = project_path(config) if config else default_config_path(name)
    spec = DETECTORS.get(name)
    loose = spec.calibration_set if calibrating else ()
    smallest = ([f"inference.min_face_px={min_face_px}"]
                if min_face_px is not None and "min_face_px" in spec.defaults.get("inference", {}) else [])
    return detection_config(name, path, set_items=[*smallest, *entry["set"], *loose])


def fused_entries(cfg: dict) -> dict[str, dict]:
    """detector name → its entry (config, set, weight, calibration) in the pipeline config's detection section."""
    section = cfg["detection"]
    names = section["detectors"]
    if not names:
        raise ConfigError("detection.detectors is empty: name at least one detector to fuse")
    missing = [name for name in names if name not in section]
    if missing:
        raise ConfigError(f"detection.detectors names {', '.join(missing)} but the config has no detection."
                          f"{missing[0]} section; add one like detection.blazeface")
    return {name: section[name] for name in names}


def route_small_faces(embedder: Embedder | FusedEmbedder, section: dict, device: str) -> Embedder | FusedEmbedder:
    """``embedder`` with the member ``section["member"]`` (the embedder itself, or one member of a fusion) handing
    faces narrower than ``below_px`` to its small-face student (``section["weights"]``); as it is without weights."""
    if not section["weights"]:
        return embedder
    members = embedder.members if isinstance(embedder, FusedEmbedder) else [embedder]
    names = [member.name for member in members]
    if section["member"] not in names:
        raise ConfigError(f"embedding.small_faces.member {section['member']!r} is not the embedder or a member of "
                          f"it: {', '.join(names)}")
    routed = [SizeRoutedEmbedder(member, build_embedder(member.name, section["weights"], device, member.flip),
                                 section["below_px"]) if member.name == section["member"] else member
              for member in members]
    return FusedEmbedder(routed, embedder.shares) if isinstance(embedder, FusedEmbedder) else routed[0]


def fusion_settings(cfg: dict, weights: list[float] | None = None,
                    landmark_weights: list[float] | None = None) -> FusionSettings:
    return FusionSettings(**cfg["detection"]["fusion"], weights=weights, landmark_weights=landmark_weights)


def fusion_from_config(cfg: dict, device: str) -> FusionDetector:
    """The fused photo detector a pipeline config describes."""
    entries = fused_entries(cfg)
    inference = cfg["inference"]
    detectors = {name: detector_from_config(fused_detector_config(name, entry, inference["min_face_px"]), device)
                 for name, entry in entries.items()}
    calibrators = {name: ScoreCalibrator.load(project_path(entry["calibration"]))
                   for name, entry in entries.items() if entry["calibration"]}
    settings = fusion_settings(cfg, [entry["weight"] for entry in entries.values()],
                               [entry["landmark_weight"] for entry in entries.values()])
    return FusionDetector(detectors, settings, calibrators, inference["score_threshold"])


def teacher_from_config(section: dict):
    """YOLO's pseudo-label teacher: (fused photo detector, names of its detectors) as ``section`` (the YOLO
    config's ``pseudo``) describes — the fusion of ``teacher_config``, with RetinaFace added when
    ``add_retinaface`` is set and its weights exist."""
    cfg = pipeline_config(project_path(section["teacher_config"]), section["teacher_set"])
    names = cfg["detection"]["detectors"]
    if section["add_retinaface"] and "retinaface" not in names:
        retinaface = detection_config("retinaface", project_path(section["retinaface_config"]))
        try:
            resolve_weights(retinaface["model"]["weights"])
        except FileNotFoundError as error:
            tqdm.write(f"teacher without RetinaFace: {error}")
        else:
            cfg["detection"]["retinaface"] = {**DETECTOR_ENTRY, "config": section["retinaface_config"]}
            names.append("retinaface")
    return fusion_from_config(cfg, section["device"]), list(names)
