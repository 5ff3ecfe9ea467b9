"""Score-level fusion of embedders: the fused cosine is the weighted mean of the members' cosines, the weights come
from View 1 (or are equal), and the fusion runs through the same embedding step and benchmark as one embedder."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn

import evaluate
import pipeline.build as build
from common.config import ConfigError
from common.io import read_image
from common.registry import register_embedder
from embedding.align import scaled_template
from embedding.embedder import Alignment, Embedder
from embedding.fusion import FusedEmbedder
from pipeline import FacePipeline, build_embedder, list_embedders, pipeline_config
from pipeline.embed_images import embed_images
from pipeline.embedder_fusion import fitted_weights, write_weights
from tests.conftest import ROOT, shared_path

MEMBERS = {"test_fusion_a": (24, 8, 0), "test_fusion_b": (40, 12, 1)}  # name: (chip side, dimension, seed)


def _tiny_embedder(name):
    side, dim, seed = MEMBERS[name]

    def make(weights=None, device="cpu", **_) -> Embedder:
        generator = torch.Generator().manual_seed(seed)
        model = nn.Sequential(nn.Conv2d(3, 4, 5, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                              nn.Linear(16, dim))  # (B, 3, side, side) -> (B, dim)
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
        alignment = Alignment(size=side, template=tuple(map(tuple, scaled_template(side).tolist())), margin=2)
        return Embedder(name, model, alignment, (127.5,) * 3, (128.0,) * 3, f"seed{seed}", device=device)
    return make


for _name in MEMBERS:
    if _name not in list_embedders():
        register_embedder(_name)(_tiny_embedder(_name))


def _unit(rows, dim, seed):
    vectors = np.random.default_rng(seed).normal(size=(rows, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_fused_cosine_is_the_weighted_mean_of_the_members_cosines():
    fusion = FusedEmbedder([_tiny_embedder("test_fusion_a")(), _tiny_embedder("test_fusion_b")()], [3.0, 1.0])
    a1, a2, b1, b2 = _unit(50, 8, 0), _unit(50, 8, 1), _unit(50, 12, 2), _unit(50, 12, 3)
    first, second = fusion.fuse([a1, b1]), fusion.fuse([a2, b2])
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1, atol=1e-6)
    np.testing.assert_allclose((first * second).sum(1), 0.75 * (a1 * a2).sum(1) + 0.25 * (b1 * b2).sum(1),
                               atol=1e-6)
    assert fusion.name == "test_fusion_a+test_fusion_b" and fusion.describe() == {"test_fusion_a": 0.75,
                                                                                 "test_fusion_b": 0.25}


@pytest.mark.parametrize("weights", [[1.0], [1.0, -1.0], [0.0, 0.0], [1.0, float("nan")]])
def test_bad_weights_are_refused(weights):
    members = [_tiny_embedder("test_fusion_a")(), _tiny_embedder("test_fusion_b")()][:max(len(weights), 1)]
    with pytest.raises(ConfigError):
        FusedEmbedder(members, weights)


def test_build_embedder_reads_the_view1_weights_else_averages(tmp_path, monkeypatch):
    config = tmp_path / "embedder_fusion.yaml"
    monkeypatch.setattr(build, "EMBEDDER_FUSION_CONFIG", config)
    assert build_embedder("test_fusion_a+test_fusion_b").shares == [0.5, 0.5]  # no file: the plain average
    write_weights("test_fusion_a+test_fusion_b", {"test_fusion_a": 3.0, "test_fusion_b": 1.0}, config)
    assert config.read_text().startswith("# Score-level fusions")  # the header says where the weights come from
    assert build_embedder("test_fusion_a+test_fusion_b").shares == [0.75, 0.25]
    with pytest.raises(ConfigError, match="weights and align apply to one embedder"):
        build_embedder("test_fusion_a+test_fusion_b", weights="x.pth")
    write_weights("test_fusion_a+test_fusion_b", {"test_fusion_a": 1.0}, config)
    with pytest.raises(ConfigError, match="a weight to each of"):
        build_embedder("test_fusion_a+test_fusion_b")


def test_fitted_weights_favour_the_informative_member():
    rng = np.random.default_rng(0)
    same = rng.random(2000) < 0.5
    informative = np.where(same, 0.7, 0.2) + rng.normal(0, 0.1, 2000)
    noise = rng.normal(0.4, 0.1, 2000)
    weights = fitted_weights(np.stack([noise, informative], axis=1), same)
    assert weights[1] > 10 * max(weights[0], 1e-9)


def test_fused_embedding_of_images_is_the_members_embeddings_fused(tmp_path, monkeypatch):
    monkeypatch.setattr(build, "EMBEDDER_FUSION_CONFIG", tmp_path / "none.yaml")
    paths = [shared_path("data", "lfw", "deepfunneled", "Colin_Powell", f"Colin_Powell_000{i}.jpg") for i in (1, 2)]
    detector = build.build_detector("mtcnn")
    fusion = build_embedder("test_fusion_a+test_fusion_b")
    fused = embed_images(paths, fusion, detector, "mtcnn", cache_dir=tmp_path, progress=False)
    members = [embed_images(paths, member, detector, "mtcnn", cache_dir=None, progress=False).embeddings
               for member in fusion.members]
    np.testing.assert_allclose(fused.embeddings, fusion.fuse(members), atol=1e-6)
    assert fused.embeddings.shape == (2, 20) and not fused.no_face.any()


def test_evaluate_lfw_with_a_fusion_of_embedders(tmp_path, monkeypatch):
    monkeypatch.setattr(build, "EMBEDDER_FUSION_CONFIG", tmp_path / "none.yaml")
    root = shared_path("data", "lfw")
    assert evaluate.main(["--benchmark", "lfw", "--embedder", "test_fusion_a+test_fusion_b", "--lfw-root", str(root),
                          "--limit", "2", "--cache-dir", str(tmp_path / "cache"), "--out",
                          str(tmp_path / "lfw.json")]) == 0
    report = json.loads((tmp_path / "lfw.json").read_text())
    assert report["embedder"] == "test_fusion_a+test_fusion_b" and report["n_pairs"] == 20


def test_the_face_pipeline_runs_a_fusion_each_member_on_its_own_chips(tmp_path, monkeypatch):
    monkeypatch.setattr(build, "EMBEDDER_FUSION_CONFIG", tmp_path / "none.yaml")
    cfg = pipeline_config(ROOT / "configs" / "pipeline.yaml", ["embedding.embedder=test_fusion_a+test_fusion_b",
                                                               "detection.detectors=[mtcnn]"])
    pipeline = FacePipeline.from_config(cfg)
    image = read_image(shared_path("data", "lfw", "deepfunneled", "Colin_Powell", "Colin_Powell_0001.jpg"))
    faces = pipeline(image)
    fusion = pipeline.embedder
    members = [member.embed_chips(member.alignment.align(image, faces.landmarks)).numpy()
               for member in fusion.members]
    np.testing.assert_allclose(faces.embeddings.numpy(), fusion.fuse(members), atol=1e-6)
    assert faces.chips.shape[1:] == (24, 24, 3)  # the first member's chips: thumbnails, enrolment checks
