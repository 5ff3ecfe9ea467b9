"""MobileFaceNet: the paper's size and cost, batch-norm folding, and our checkpoints in and out of the embedder."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from common.checkpoint import CheckpointError, save_checkpoint
from common.registry import build_model
from pipeline import build_embedder
from embedding import mobilefacenet
from embedding.align import ARCFACE_TEMPLATE_112


def _randomise_batchnorm(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            size = module.num_features
            module.running_mean.copy_(torch.rand(size, generator=generator) * 0.2 - 0.1)
            module.running_var.copy_(torch.rand(size, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(size, generator=generator) + 0.5)
            module.bias.data.copy_(torch.rand(size, generator=generator) * 0.2 - 0.1)
    return model


def _chips(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, 112, 112, 3), dtype=np.uint8)


@pytest.mark.parametrize("dim, params", [(128, 1_003_136), (512, 1_200_512)])
def test_size_and_cost_are_the_papers(dim, params):
    """Chen et al. 2018: 0.99 M parameters and 221 M multiply-adds at 112×112 with a 128-d embedding."""
    model = mobilefacenet.MobileFaceNet(dim).eval()
    assert sum(p.numel() for p in model.parameters()) == params
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        output = model(torch.zeros(2, 3, 112, 112))
    assert output.shape == (2, dim)
    assert 220e6 < counter.get_total_flops() / 2 / 2 < 222e6  # FLOPs → multiply-adds, per image


def test_bad_configuration_and_input_are_refused():
    with pytest.raises(ValueError, match="embedding_dim must be one of"):
        mobilefacenet.MobileFaceNet(256)
    with pytest.raises(ValueError, match=r"expects \(B, 3, 112, 112\)"):
        mobilefacenet.MobileFaceNet()(torch.zeros(1, 3, 160, 160))


def test_every_parameter_trains():
    model = mobilefacenet.MobileFaceNet().train()
    model(torch.randn(4, 3, 112, 112)).pow(2).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_folding_batchnorm_keeps_the_outputs():
    model = _randomise_batchnorm(mobilefacenet.MobileFaceNet()).eval()
    inputs = torch.randn(3, 3, 112, 112)
    fused = mobilefacenet.fuse_for_inference(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    with torch.inference_mode():
        expected, folded = model(inputs), fused(inputs)
    assert (expected - folded).abs().max() <= 1e-4 * expected.abs().max()


def test_random_embedder_builds_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        embedder = build_embedder("mobilefacenet")
        embeddings = embedder.embed_chips(_chips(5))
    assert embeddings.shape == (5, 128)
    torch.testing.assert_close(embeddings.norm(dim=1), torch.ones(5))
    assert embedder.alignment.size == 112
    np.testing.assert_allclose(embedder.alignment.template, ARCFACE_TEMPLATE_112)
    assert isinstance(build_model("mobilefacenet", embedding_dim=512), mobilefacenet.MobileFaceNet)


@pytest.mark.parametrize("as_checkpoint", [False, True])
def test_our_weights_load_by_path(tmp_path, as_checkpoint):
    model = _randomise_batchnorm(mobilefacenet.MobileFaceNet(512), seed=3).eval()
    path = tmp_path / "mobilefacenet.pth"
    if as_checkpoint:
        save_checkpoint(path, model=model, epoch=3)
    else:
        torch.save(model.state_dict(), path)
    embedder = build_embedder("mobilefacenet", weights=str(path))  # the 512-d size is read from the file
    chips = _chips(4, seed=1)
    with torch.inference_mode():
        expected = torch.nn.functional.normalize(model(embedder.preprocess(chips)))
    assert (embedder.embed_chips(chips) - expected).abs().max() < 1e-5
    assert mobilefacenet.file_sha256(path)[:16] in embedder.cache_key
    with pytest.raises(ValueError, match="holds a 512-d MobileFaceNet, not 128-d"):
        mobilefacenet.load_mobilefacenet(path, embedding_dim=128)


def test_a_foreign_file_is_named_in_the_error(tmp_path):
    path = tmp_path / "facenet.pt"
    torch.save(build_model("inception_resnet_v1").state_dict(), path)
    with pytest.raises(CheckpointError, match=r"facenet\.pt is not a MobileFaceNet state_dict"):
        build_embedder("mobilefacenet", weights=str(path))
    with pytest.raises(FileNotFoundError, match=r"absent\.pth"):
        build_embedder("mobilefacenet", weights=str(tmp_path / "absent.pth"))


def test_test_time_flip_makes_a_face_and_its_mirror_image_one_embedding():
    embedder = build_embedder("mobilefacenet")
    chips = _chips(3)
    mirrored = np.ascontiguousarray(chips[:, :, ::-1])
    plain_key = embedder.cache_key
    assert not torch.allclose(embedder.embed_chips(chips), embedder.embed_chips(mirrored), atol=1e-3)
    embedder.flip = True
    flipped = embedder.embed_chips(chips)
    torch.testing.assert_close(flipped, embedder.embed_chips(mirrored), atol=1e-5, rtol=0)
    torch.testing.assert_close(flipped.norm(dim=1), torch.ones(3))
    assert embedder.cache_key == plain_key + "-flip"  # cached apart from the plain embeddings
