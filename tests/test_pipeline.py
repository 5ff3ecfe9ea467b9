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


@pytest.mark.slow
def test_train_stage_all_runs_every_stage_for_real_on_tiny_data(tmp_path):
    """``train.py --stage all``, nothing mocked: the detection stage fits MTCNN's calibration on dlib's training
    photos, the embedding stage trains MobileFaceNet one epoch on 6 LFW people of fold 1, and the matching stage fits
    the verifier on pairs of their photos with the embedder just trained."""
    import yaml

    import train
    from common.lfw import read_lfw_people_folds
    from tests.conftest import shared_path

    lfw = shared_path("data", "lfw")
    people = sorted(name for name, count in read_lfw_people_folds(lfw / "people.txt")[0].items() if 4 <= count <= 5)[:6]
    embedding_yaml, matching_yaml = tmp_path / "embedding.yaml", tmp_path / "matching.yaml"
    embedding_yaml.write_text(yaml.safe_dump({
        "stage": "embedding", "model": {"name": "mobilefacenet", "embedder": "mobilefacenet"},
        "data": {"root": str(lfw / "deepfunneled"), "cache_dir": str(tmp_path / "chips"), "identities": people,
                 "lfw_people": str(lfw / "people.txt"), "val_fraction": 0.34, "images_per_identity": 2,
                 "val_max_pairs": 20, "augment": False}}))
    photos = {name: sorted((lfw / "deepfunneled" / name).glob("*.jpg")) for name in people}
    rows = ["file_x,file_y,same"]
    for index, name in enumerate(people):
        other = people[(index + 1) % len(people)]
        rows += [f"{name}/{photos[name][0].name},{name}/{photos[name][1].name},1",
                 f"{name}/{photos[name][2].name},{other}/{photos[other][0].name},0"]
    (tmp_path / "pairs.csv").write_text("\n".join(rows) + "\n")
    matching_yaml.write_text(yaml.safe_dump({
        "stage": "matching", "detector": "mtcnn",
        "data": {"pairs": str(tmp_path / "pairs.csv"), "test_pairs": None, "images": str(lfw / "deepfunneled"),
                 "cache_dir": str(tmp_path / "embeddings")}}))
    run = tmp_path / "run"
    assert train.main(["--stage", "all", "--config", str(ROOT / "configs" / "pipeline.yaml"),
                       "--set", "detection.detectors=[mtcnn]",
                       "--set", f"calibration.data=[{shared_path('data', 'detection', 'dlib_faces', 'training.xml')}]",
                       "--set", f"embedding.train_config={embedding_yaml}",
                       "--set", f"matching.train_config={matching_yaml}",
                       "--epochs", "1", "--batch-size", "8", "--device", "cpu", "--num-workers", "0",
                       "--no-auto-resume", "--checkpoint-dir", str(run)]) == 0
    manifest = json.loads((run / "manifest.json").read_text())
    assert [manifest[stage]["status"] for stage in ("detection", "embedding", "matching")] == ["done"] * 3
    calibration = json.loads((run / "calibration" / "mtcnn.json").read_text())
    assert calibration["fitted_on"]["faces"] > 0
    weights = manifest["embedding"]["outputs"]["weights"]
    assert weights and (run / "embedding").is_dir() and weights.endswith("_best.pth")
    assert (run / "matching" / "verifier.joblib").is_file()
