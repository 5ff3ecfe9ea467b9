"""The pipeline object (detect → align → embed) and the resumable training chain with its manifest."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import pipeline.training as pipeline_module
from common.detections import Detections
from pipeline import FacePipeline, pipeline_config
from pipeline.config import PIPELINE_DEFAULTS
from pipeline.training import StageFailed, run_pipeline_training
from embedding.align import scaled_template
from embedding.embedder import Alignment, Embedder
from tests.conftest import ROOT


class OneFace:
    def detect(self, images):
        points = torch.tensor([[[40.0, 50], [80, 50], [60, 70], [45, 90], [75, 90]]])
        return [Detections(torch.tensor([[20.0, 20, 100, 110]]), torch.tensor([0.99]), points) for _ in images]


def test_pipeline_detects_aligns_and_embeds_with_timings():
    embedder = Embedder("tiny", torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(8)),
                        Alignment(32, tuple(map(tuple, scaled_template(32)))), mean=(127.5,) * 3, std=(128.0,) * 3,
                        weights_hash="random")
    photo = np.random.default_rng(0).integers(0, 255, (120, 120, 3), np.uint8)
    faces = FacePipeline(OneFace(), embedder).process(photo)
    assert faces.chips.shape == (1, 32, 32, 3) and faces.embeddings.shape == (1, 8)
    assert torch.allclose(faces.embeddings.norm(dim=1), torch.ones(1))
    assert set(faces.timings) == {"detect", "align_embed"}


def test_shipped_pipeline_config_loads():
    cfg = pipeline_config(ROOT / "configs" / "pipeline.yaml")
    assert cfg["detection"]["detectors"] and cfg["embedding"]["embedder"] == "dlib_resnet+omz0095+sface"
    assert set(cfg) == set(PIPELINE_DEFAULTS)


def test_chain_runs_in_order_skips_finished_stages_and_resumes_at_a_failure(tmp_path, monkeypatch):
    calls, fail = [], {"embedding": True}

    def runner(stage):
        def run(cfg, run_dir, manifest):
            calls.append(stage)
            if stage == "matching":  # the next stage reads the previous one's outputs from the manifest
                assert manifest["embedding"]["outputs"] == {"weights": "emb.pth"}
            if fail.get(stage):
                raise OSError("disk full")
            return {"weights": "emb.pth"} if stage == "embedding" else {}
        return run

    monkeypatch.setattr(pipeline_module, "STAGE_RUNNERS", {s: runner(s) for s in pipeline_module.STAGES})
    cfg = pipeline_config(ROOT / "configs" / "pipeline.yaml", [f"output.run_dir={tmp_path}"])
    with pytest.raises(StageFailed, match="stage embedding failed: disk full.*resumes at embedding"):
        run_pipeline_training(cfg)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["detection"]["status"] == "done" and manifest["embedding"]["status"] == "failed"
    assert "matching" not in manifest and calls == ["detection", "embedding"]
    fail.clear()
    run_pipeline_training(cfg)
    assert calls == ["detection", "embedding", "embedding", "matching"]  # detection was not rerun
    assert (tmp_path / "config.yaml").is_file()
    run_pipeline_training(cfg, ("detection",), force=True)  # --stage detection: that stage alone, again
    assert calls[-1] == "detection"
