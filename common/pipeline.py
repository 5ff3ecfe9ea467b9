"""The pipeline as one object: detect (each configured detector) → fuse → align → embed, and the ``--stage all``
training chain. ``configs/pipeline.yaml`` describes both; ``infer.py``, ``evaluate.py`` and ``attendance.py``
build their photo → faces → embeddings path from it.

Training runs detection (score calibration of the fused detectors) → embedding → matching, each stage writing its
outputs and a ``manifest.json`` entry in the run directory; the next stage reads what it needs from the
manifest. A stage that finished is skipped on a rerun; a failed stage stops the chain with its error recorded,
and the rerun starts from it.
"""
from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from common.config import build_config, project_path, save_config
from common.detections import Detections
from fusion.detector import FUSION_DEFAULTS

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("detection", "embedding", "matching")

PIPELINE_DEFAULTS = {
    **copy.deepcopy(FUSION_DEFAULTS),
    "stage": "all",
    # the embedder faces are aligned for and embedded with (common.registry.build_embedder)
    # flip: also embed each face's mirror image and average (test-time flip)
    "embedding": {"embedder": "dlib_resnet", "weights": None, "flip": False,
                  # train.py --stage all: the embedding stage's own config (null = skip training, use weights)
                  "train_config": None},
    # train.py --stage all: the matching stage's config (configs/matching.yaml); null = skip
    "matching": {"train_config": None},
    "device": "cpu",
    "output": {"run_dir": "runs/pipeline"},
}


def pipeline_config(config_path=None, set_items: Sequence[str] = (), flag_overrides: dict | None = None) -> dict:
    path = config_path if config_path is not None else ROOT / "configs" / "pipeline.yaml"
    return build_config(PIPELINE_DEFAULTS, path, flag_overrides, set_items)


@dataclass
class Faces:
    """One photo's faces: ``detections``, aligned ``chips`` (N, S, S, 3) uint8, ``embeddings`` (N, D)."""

    detections: Detections
    chips: np.ndarray
    embeddings: torch.Tensor
    timings: dict = field(default_factory=dict)


class Pipeline:
    """``process(image)`` → ``Faces``. ``detector``: any photo detector (``detect(list) -> list[Detections]``);
    ``embedder``: an ``embedding.embedder.Embedder``. ``verbose`` prints each stage's time per photo."""

    def __init__(self, detector, embedder, verbose: bool = False):
        self.detector, self.embedder, self.verbose = detector, embedder, verbose

    def detect(self, image: np.ndarray) -> Detections:
        return self.detector.detect([image])[0]

    def process(self, image: np.ndarray, detections: Detections | None = None) -> Faces:
        timings = {}
        start = time.perf_counter()
        if detections is None:
            detections = self.detect(image)
        timings["detect"] = time.perf_counter() - start
        start = time.perf_counter()
        chips = self.embedder.alignment.align(image, detections.landmarks)
        timings["align"] = time.perf_counter() - start
        start = time.perf_counter()
        embeddings = self.embedder.embed_chips(chips)
        timings["embed"] = time.perf_counter() - start
        if self.verbose:
            print("  ".join(f"{stage} {seconds * 1000:.0f} ms" for stage, seconds in timings.items())
                  + f"  ({len(detections)} faces)")
        return Faces(detections, chips, embeddings, timings)


def detector_from_pipeline(cfg: dict, device: str | None = None):
    from fusion.detector import fusion_from_config
    return fusion_from_config(cfg, device or cfg["device"])


def embedder_from_pipeline(cfg: dict, device: str | None = None):
    from matching.benchmark import build_embedder_for  # published weights, or a checkpoint of our training
    section = cfg["embedding"]
    return build_embedder_for(section["embedder"], section["weights"], device or cfg["device"], section["flip"])


def pipeline_from_config(cfg: dict, device: str | None = None, verbose: bool = False) -> Pipeline:
    return Pipeline(detector_from_pipeline(cfg, device), embedder_from_pipeline(cfg, device), verbose)


# ---------------------------------------------------------------- training chain


class StageFailed(RuntimeError):
    pass


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


def _run_detection_stage(cfg: dict, run_dir: Path, manifest: dict) -> dict:
    from fusion.detector import fit_fusion_calibration
    stage_cfg = copy.deepcopy(cfg)
    stage_cfg["calibration"]["out_dir"] = str(run_dir / "calibration")
    written = fit_fusion_calibration(stage_cfg)
    return {"calibration": {name: str(path) for name, path in written.items()}}


def _run_embedding_stage(cfg: dict, run_dir: Path, manifest: dict) -> dict:
    config = cfg["embedding"]["train_config"]
    if not config:
        return {"skipped": "embedding.train_config is null: the embedder's published weights are used",
                "weights": cfg["embedding"]["weights"]}
    from embedding.training import EMBEDDING_DEFAULTS, run_embedding_training
    stage_cfg = build_config(EMBEDDING_DEFAULTS, project_path(config),
                             set_items=[f"output.checkpoint_dir={run_dir / 'embedding'}",
                                        f"output.log_dir={run_dir / 'embedding' / 'logs'}"])
    run_embedding_training(stage_cfg)
    best = sorted((run_dir / "embedding").glob("*_best.pth"))
    return {"weights": str(best[0]) if best else None, "embedder": stage_cfg["model"]["embedder"]}


def _run_matching_stage(cfg: dict, run_dir: Path, manifest: dict) -> dict:
    config = cfg["matching"]["train_config"]
    if not config:
        return {"skipped": "matching.train_config is null"}
    from matching.training import matching_config, run_matching_training
    embedding = manifest.get("embedding", {}).get("outputs", {})
    set_items = [f"output.path={run_dir / 'matching' / 'verifier.joblib'}"]
    if embedding.get("weights"):
        set_items += [f"embedder.weights={embedding['weights']}", f"embedder.name={embedding['embedder']}"]
    run_matching_training(matching_config(project_path(config), set_items=set_items))
    return {"verifier": str(run_dir / "matching" / "verifier.joblib")}


STAGE_RUNNERS = {"detection": _run_detection_stage, "embedding": _run_embedding_stage,
                 "matching": _run_matching_stage}


def run_pipeline_training(cfg: dict, stages: Sequence[str] = STAGES, force: bool = False) -> dict:
    """Run ``stages`` in order; finished stages (per the manifest) are skipped unless ``force``, a failure stops
    the chain."""
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
            raise StageFailed(f"stage {stage} failed: {error}. Fix it and rerun the same command: finished stages "
                              f"are skipped, the chain resumes at {stage}.") from error
        manifest[stage] = {"status": "done", "outputs": outputs, "seconds": round(time.time() - start, 1)}
        _write_manifest(cfg, manifest)
    return manifest


def fit_detection_stage(cfg: dict) -> dict:
    """``train.py --stage detection --config configs/pipeline.yaml``: the detection stage alone."""
    return run_pipeline_training(cfg, ("detection",), force=True)
