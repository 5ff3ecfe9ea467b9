"""FaceNet (InceptionResnetV1): facenet-pytorch's state_dicts load under our names and give the same embeddings."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from common.checkpoint import CheckpointError
from common.io import read_image
from common.registry import build_model
from pipeline import build_embedder
from embedding import facenet
from embedding.align import margin_crop, scaled_template
from tests.conftest import shared_path

IDENTICAL_ATOL = 1e-5
LFW_FACE_BOX = np.array([[75.0, 70.0, 175.0, 185.0]])  # where deep funnelling puts the face in a 250-px photo
LFW_SAMPLES = ("Aaron_Peirsol/Aaron_Peirsol_0001.jpg", "Serena_Williams/Serena_Williams_0001.jpg",
               "Tony_Blair/Tony_Blair_0001.jpg", "Zhang_Ziyi/Zhang_Ziyi_0001.jpg")


def _facenet_pytorch_model(**kwargs):
    from facenet_pytorch import InceptionResnetV1
    return InceptionResnetV1(**kwargs)


@pytest.fixture(scope="module")
def lfw_chips():
    """(4, 160, 160, 3) uint8 box crops of real LFW faces."""
    root = shared_path("data", "lfw", "deepfunneled")
    return np.concatenate([margin_crop(read_image(root / name), LFW_FACE_BOX, facenet.INPUT_SIZE)
                           for name in LFW_SAMPLES])


@pytest.fixture(scope="module")
def reference(lfw_chips):
    """facenet-pytorch's network in eval mode, random weights, batch-norm statistics measured on the real chips:
    with the default statistics (mean 0, variance 1) a random network maps every face to nearly the same
    embedding, and agreeing on those would prove little."""
    torch.manual_seed(0)
    model = _facenet_pytorch_model(pretrained=None)
    for module in model.modules():
        if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            module.reset_running_stats()
            module.momentum = None  # running statistics = plain average over the batches seen
    with torch.no_grad():
        model.train()(_normalised(lfw_chips))
    return model.eval()


def _normalised(chips: np.ndarray) -> torch.Tensor:
    """facenet-pytorch's ``fixed_image_standardization``: (x - 127.5) / 128, NCHW."""
    return (torch.from_numpy(chips).permute(0, 3, 1, 2).float() - 127.5) / 128.0


def test_every_facenet_pytorch_key_maps_onto_ours_with_its_shape():
    theirs = _facenet_pytorch_model(pretrained=None).state_dict()
    ours = facenet.InceptionResnetV1().state_dict()
    mapped = {facenet.facenet_key(key): key for key in theirs}
    assert len(mapped) == len(theirs) == len(ours) == 714  # one-to-one, nothing left over on either side
    assert set(mapped) == set(ours)
    for our_key, their_key in mapped.items():
        assert ours[our_key].shape == theirs[their_key].shape, (our_key, their_key)
    assert facenet.facenet_key("repeat_1.3.branch0.conv.weight") == "stage35.3.branches.0.0.conv.weight"
    assert facenet.facenet_key("mixed_7a.branch2.1.bn.running_var") == "reduction_b.branches.2.1.bn.running_var"
    assert facenet.facenet_key("block8.conv2d.bias") == "stage8.5.project.bias"
    assert facenet.facenet_key("conv2d_4b.bn.weight") == "stem.6.bn.weight"


def test_classifier_maps_too_and_is_dropped_for_embeddings():
    theirs = _facenet_pytorch_model(pretrained=None, classify=True, num_classes=7).state_dict()
    classifier = facenet.load_state(facenet.InceptionResnetV1(classify=True, num_classes=7), theirs, "logits")
    assert torch.equal(classifier.classifier.weight, theirs["logits.weight"])
    embedder_model = facenet.load_state(facenet.InceptionResnetV1(), theirs, "logits")  # logits ignored
    assert embedder_model.classifier is None


def test_same_embeddings_as_facenet_pytorch_on_real_chips(reference, lfw_chips):
    ours = facenet.load_state(facenet.InceptionResnetV1(), reference.state_dict(), "random").eval()
    inputs = _normalised(lfw_chips)
    with torch.inference_mode():
        expected = reference(inputs)  # (4, 512), L2-normalised by facenet-pytorch
        raw = ours(inputs)
        fused_model = facenet.fuse_for_inference(ours)
        fused = fused_model(inputs)
    assert not any(isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)) for m in fused_model.modules())
    merged = [name for name, module in fused_model.named_modules() if isinstance(module, facenet.Branching)
              and module.entry is not None]
    assert len(merged) == 5 + 10 + 6 + 1  # every residual block and reduction_b (reduction_a has one 1×1 opener)
    assert raw.shape == (len(LFW_SAMPLES), facenet.EMBEDDING_DIM)
    assert (F.normalize(raw) - expected).abs().max() <= IDENTICAL_ATOL
    assert (F.normalize(fused) - expected).abs().max() <= IDENTICAL_ATOL
    # the faces' embeddings differ (cosine similarities 0.62-0.89), so agreeing to 1e-5 is a real check
    assert (expected @ expected.T).min() < 0.7


def test_embedder_from_a_facenet_pytorch_file(reference, lfw_chips, tmp_path):
    path = tmp_path / "facenet_random.pt"
    torch.save(reference.state_dict(), path)  # how facenet-pytorch ships vggface2 / casia-webface
    embedder = build_embedder("facenet", weights=str(path), device="cpu")
    assert embedder.alignment.size == 160 and embedder.dim == 512
    assert embedder.cache_key.startswith("facenet-") and facenet.file_sha256(path)[:16] in embedder.cache_key
    with torch.inference_mode():
        expected = reference(_normalised(lfw_chips))
    assert (embedder.embed_chips(lfw_chips) - expected).abs().max() <= IDENTICAL_ATOL


def test_random_init_embedder_builds_offline():
    first, second = build_embedder("facenet"), build_embedder("facenet")
    chips = np.random.default_rng(0).integers(0, 256, (2, 160, 160, 3), dtype=np.uint8)
    embeddings = first.embed_chips(chips)
    assert embeddings.shape == (2, 512)
    torch.testing.assert_close(embeddings.norm(dim=1), torch.ones(2))
    assert first.cache_key != second.cache_key  # two random networks never share cached embeddings
    assert isinstance(build_model("inception_resnet_v1"), facenet.InceptionResnetV1)


def test_wrong_files_are_named_in_the_error(tmp_path):
    other = tmp_path / "mobilefacenet.pth"
    torch.save(build_model("mobilefacenet").state_dict(), other)
    with pytest.raises(CheckpointError, match=r"mobilefacenet\.pth is not an InceptionResnetV1.*missing keys"):
        facenet.load_facenet(other)
    text = tmp_path / "notes.txt"
    text.write_text("not weights")
    with pytest.raises(CheckpointError, match=r"notes\.txt is unreadable"):
        facenet.load_facenet(text)
    with pytest.raises(FileNotFoundError, match=r"absent\.pt"):
        facenet.load_facenet(tmp_path / "absent.pt")


def test_published_weights_offline_say_what_to_download_and_where(tmp_path, monkeypatch):
    def no_network(url, destination, progress=True):
        raise OSError("network is unreachable")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(FileNotFoundError) as caught:
        facenet.load_facenet("vggface2")
    message = str(caught.value)
    assert facenet.PUBLISHED_WEIGHTS["vggface2"] in message
    assert str(tmp_path / "checkpoints" / "20180402-114759-vggface2.pt") in message
    assert "--weights PATH" in message and "network is unreachable" in message


def test_published_weights_found_in_the_torch_cache(reference, tmp_path, monkeypatch):
    """A file put where the error message says is used without any download."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cached = tmp_path / "checkpoints" / "20180408-102900-casia-webface.pt"
    cached.parent.mkdir()
    state = dict(reference.state_dict(), **{"logits.weight": torch.zeros(10575, 512),
                                            "logits.bias": torch.zeros(10575)})
    torch.save(state, cached)
    model, weights_hash = facenet.load_facenet("casia-webface")
    assert weights_hash == facenet.file_sha256(cached)
    assert torch.equal(model.stem[0].conv.weight, reference.conv2d_1a.conv.weight)
    classifier, _ = facenet.load_facenet("casia-webface", classify=True)
    assert classifier.classifier.out_features == 10575


@pytest.mark.slow  # MTCNN on 30 LFW photos
def test_template_is_where_a_facenet_box_crop_puts_the_landmarks():
    """FACENET_TEMPLATE_160 was measured on 600 LFW photos; an every-20th subset of 30 re-measured gives the same
    points within 2.3-4.9 px (the per-photo spread is 4-7 px in y, 13-23 px in x: LFW's yaw), while the
    160-scaled ArcFace template lies 9-19 px away from them."""
    from bench.bench_embedders import measure_template
    measured = measure_template(30)
    assert measured["faces"] >= 28
    gaps = np.linalg.norm(np.array(measured["mean"]) - facenet.FACENET_TEMPLATE_160, axis=1)
    assert gaps.max() < 6.0, gaps
    arcface_gaps = np.linalg.norm(np.array(measured["mean"]) - scaled_template(facenet.INPUT_SIZE), axis=1)
    assert arcface_gaps.mean() > 2 * gaps.mean(), arcface_gaps
