"""Training through the composition root: one detector (its registered trainer, given the parts it needs), the
fused detectors' score calibration, an embedder, a verifier, and the ``train.py --stage all`` chain.

The chain (``configs/pipeline.yaml``) runs detection (score calibration of the fused detectors) → embedding →
matching, each stage writing its outputs and a ``manifest.json`` entry in the run directory; the next stage reads
what it needs from the manifest. A stage that finished is skipped on a rerun; a stage that fails stops the chain
with its error recorded, and the rerun starts from it. The ``train`` section of the pipeline config carries the
training flags the stages share (``--epochs``, ``--device`` ...) into each stage.
"""
from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Sequence

from tqdm import tqdm

from common.config import ConfigError, build_config, project_path, save_config
from common.errors import UserError
from common.io import read_image
from common.metrics import size_bin_labels
from common.registry import DETECTORS
from detection.evaluation import load_benchmark
from embedding.training import EMBEDDING_DEFAULTS, run_embedding_training
from fusion.calibration import METHODS as CALIBRATION_METHODS
from fusion.calibration import ScoreCalibrator, labelled_scores
from pipeline.build import build_detector, detector_from_config, fused_detector_config, fused_entries, \
    teacher_from_config
from pipeline.config import FUSION
from pipeline.group_photos import GROUPS, generate_groups, groups_config
from pipeline.matching_stage import matching_config, run_matching_training

STAGES = ("detection", "embedding", "matching")
# The parts a detector's trainer may ask for (``DetectorSpec.train_parts``), supplied here.
TRAINING_PARTS = {"teacher_factory": teacher_from_config}
# The face detector embedding training aligns with when its config says ``data.align: mtcnn``.
EMBEDDING_ALIGN_DETECTOR = "mtcnn"


def train_detector(cfg: dict):
    """Train the detector a detection config names (``fusion``: fit the fused detectors' score calibration)."""
    if cfg["detector"] == FUSION:
        return fit_detection_stage(cfg)
    spec = DETECTORS.get(cfg["detector"])
    return spec.train(cfg, **{part: TRAINING_PARTS[part] for part in spec.train_parts})


def train_embedder(cfg: dict) -> list[dict]:
    """Train an embedder (``configs/embedding_*.yaml``); MTCNN finds the faces when ``data.align`` is mtcnn."""
    return run_embedding_training(cfg, lambda device: build_detector(EMBEDDING_ALIGN_DETECTOR, device=device))


def embedding_config(config_path=None, set_items: Sequence[str] = (), flag_overrides: dict | None = None) -> dict:
    cfg = build_config(EMBEDDING_DEFAULTS, config_path, flag_overrides, set_items)
    if cfg["stage"] != "embedding":
        raise ConfigError(f"{config_path}: stage is {cfg['stage']!r} but --stage embedding was given")
    return cfg


def calibration_items(section: dict) -> tuple[list[dict], list[str]]:
    """The labelled photos ``calibration.data`` names (one annotation file, ``groups``, or a list of them):
    ``groups`` is the group-photo benchmark's tune split (its report split is never fitted on)."""
    sources = section["data"] if isinstance(section["data"], list) else [section["data"]]
    items, described = [], []
    for source in sources:
        path = generate_groups(groups_config(), "tune", device=section["device"]) if source == GROUPS else source
        items += load_benchmark(path, section["root"], section["format"])
        described.append(f"{source} ({path})" if source == GROUPS else str(source))
    return items, described


def fit_fusion_calibration(cfg: dict) -> dict[str, Path]:
    """Fit each fused detector's score calibration by face size on ``calibration.data`` and write
    ``<out_dir>/<detector>.json``, with each size bin's recall (where the detector is competent) and what it was
    fitted on. The detectors run with their ``calibration_set`` so the fit sees low-scoring misses as well as hits."""
    section = cfg["calibration"]
    if section["method"] not in CALIBRATION_METHODS:
        raise ConfigError(f"calibration.method must be one of {', '.join(CALIBRATION_METHODS)}")
    items, sources = calibration_items(section)
    images = [read_image(item["image_path"]) for item in tqdm(items, desc="reading", unit="photo")]
    written = {}
    for name, entry in fused_entries(cfg).items():
        config = fused_detector_config(name, entry, cfg["inference"]["min_face_px"], calibrating=True)
        detector = detector_from_config(config, section["device"])
        found = [detector.detect([image])[0] for image in tqdm(images, desc=f"{name} on calibration photos")]
        scores, hits, widths, face_widths, faces_found = labelled_scores(found, items, section["iou"])
        fitted_on = {"data": sources, "photos": len(items), "faces": int(len(face_widths)),
                     "detections": int(len(scores)), "iou": section["iou"], "inference": config["inference"]}
        calibrator = ScoreCalibrator(section["method"], fitted_on=fitted_on).fit(
            scores, hits, widths, section["size_bins"], face_widths, faces_found)
        written[name] = calibrator.save(Path(section["out_dir"]) / f"{name}.json")
        recalls = ", ".join(f"{label} px {entry['recall']}" for label, entry in
                            zip(size_bin_labels(section["size_bins"]), calibrator.bins) if entry["recall"] is not None)
        print(f"{name}: {int(hits.sum())} hits / {len(hits)} detections; recall by face width: {recalls} → "
              f"{written[name]} (set detection.{name}.calibration to use it)")
    return written


# ---------------------------------------------------------------- the --stage all chain


class StageFailed(UserError, RuntimeError):
    """A stage stopped on a user error (or a missing file, a full disk); the chain resumes at it on a rerun."""


def _manifest_path(cfg: dict) -> Path:
    return Path(cfg["output"]["run_dir"]) / "manifest.json"


def read_manifest(cfg: dict) -> dict:
    path = _manifest_path(cfg)
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise StageFailed(f"{path} is corrupt ({error}); delete it to rerun every stage") from None


def _write_manifest(cfg: dict, manifest: dict) -> None:
    path = _manifest_path(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    temporary.replace(path)


def _shared(cfg: dict) -> dict:
    """The chain's shared training settings that are set (``train`` section, null = each stage's own)."""
    return {key: value for key, value in cfg["train"].items() if value is not None}


def _run_detection_stage(cfg: dict, run_dir: Path, manifest: dict) -> dict:
    stage_cfg = copy.deepcopy(cfg)
    stage_cfg["calibration"]["out_dir"] = str(run_dir / "calibration")
    if "device" in _shared(cfg):
        stage_cfg["calibration"]["device"] = cfg["train"]["device"]
    written = fit_fusion_calibration(stage_cfg)
    return {"calibration": {name: str(path) for name, path in written.items()}}


# pipeline ``train`` key → the embedding config's key
EMBEDDING_SHARED_KEYS = {"device": "train.device", "epochs": "train.epochs", "batch_size": "train.batch_size",
                         "lr": "train.lr", "weight_decay": "train.weight_decay", "num_workers": "train.num_workers",
                         "log_dir": "output.log_dir", "resume": "output.resume", "auto_resume": "output.auto_resume"}


def _run_embedding_stage(cfg: dict, run_dir: Path, manifest: dict) -> dict:
    config = cfg["embedding"]["train_config"]
    if not config:
        return {"skipped": "embedding.train_config is null: the embedder's published weights are used",
                "weights": cfg["embedding"]["weights"]}
    overrides = {"output.checkpoint_dir": str(run_dir / "embedding"),
                 "output.log_dir": str(run_dir / "embedding" / "logs")}
    overrides.update({EMBEDDING_SHARED_KEYS[key]: value for key, value in _shared(cfg).items()})
    stage_cfg = embedding_config(project_path(config), flag_overrides=overrides)
    train_embedder(stage_cfg)
    best = sorted((run_dir / "embedding").glob("*_best.pth"))
    return {"weights": str(best[0]) if best else None, "embedder": stage_cfg["model"]["embedder"]}


def _run_matching_stage(cfg: dict, run_dir: Path, manifest: dict) -> dict:
    config = cfg["matching"]["train_config"]
    if not config:
        return {"skipped": "matching.train_config is null"}
    embedding = manifest.get("embedding", {}).get("outputs", {})
    set_items = [f"output.path={run_dir / 'matching' / 'verifier.joblib'}"]
    if embedding.get("weights"):
        set_items += [f"embedder.weights={embedding['weights']}", f"embedder.name={embedding['embedder']}"]
    device = {"embedder.device": cfg["train"]["device"]} if "device" in _shared(cfg) else {}
    run_matching_training(matching_config(project_path(config), set_items, device))
    return {"verifier": str(run_dir / "matching" / "verifier.joblib")}


STAGE_RUNNERS = {"detection": _run_detection_stage, "embedding": _run_embedding_stage,
                 "matching": _run_matching_stage}


def run_pipeline_training(cfg: dict, stages: Sequence[str] = STAGES, force: bool = False) -> dict:
    """Run ``stages`` in order; finished stages (per the manifest) are skipped unless ``force``, a failure stops
    the chain: a user error (or a missing file, a full disk) as ``StageFailed``, a bug as itself."""
    run_dir = Path(cfg["output"]["run_dir"])
    save_config(cfg, run_dir)
    manifest = read_manifest(cfg)
    for stage in stages:
        if not force and manifest.get(stage, {}).get("status") == "done":
            print(f"[{stage}] done in an earlier run ({_manifest_path(cfg)}); skipped")
            continue
        print(f"[{stage}] running")
        start = time.time()
        manifest[stage] = {"status": "running", "started": start}
        _write_manifest(cfg, manifest)
        try:
            outputs = STAGE_RUNNERS[stage](cfg, run_dir, manifest)
        except Exception as error:
            manifest[stage] = {"status": "failed", "error": f"{type(error).__name__}: {error}", "started": start}
            _write_manifest(cfg, manifest)
            if isinstance(error, (UserError, OSError)):
                raise StageFailed(f"stage {stage} failed: {error}. Fix it and rerun the same command: finished "
                                  f"stages are skipped, the chain resumes at {stage}.") from error
            raise
        manifest[stage] = {"status": "done", "outputs": outputs, "seconds": round(time.time() - start, 1)}
        _write_manifest(cfg, manifest)
    return manifest


def fit_detection_stage(cfg: dict) -> dict:
    """``train.py --stage detection --config configs/pipeline.yaml``: the detection stage alone."""
    return run_pipeline_training(cfg, ("detection",), force=True)

