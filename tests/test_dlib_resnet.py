"""dlib's face-recognition ResNet imported from its .dat: the reader against dlib's own serialisation, descriptor
parity with dlib (dlib-bin, test-only) on dlib's own face chips, the MTCNN-landmark template against dlib's chip
geometry, training, and errors for files that are not dlib networks."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from common.checkpoint import CheckpointError
from common.io import read_image
from common.registry import build_model
from pipeline import build_detector, build_embedder
from embedding.align import fit_similarity
from embedding.dlib_serial import DlibReader
from embedding.dlib_resnet import (DLIB_INPUT_MEAN, DLIB_INPUT_SCALE, DLIB_TEMPLATE_150, INPUT_SIZE, DlibFormatError,
                                   DlibResNet, add_zero_padded, default_descriptor_file, load_dlib_resnet,
                                   read_dlib_network)
from tests.conftest import assert_embedder_trains, broken_copies, shared_path

dlib = pytest.importorskip("dlib", reason="dlib (pip install dlib-bin) is the parity reference")

LFW_PHOTOS = ("Aaron_Eckhart/Aaron_Eckhart_0001.jpg", "Serena_Williams/Serena_Williams_0003.jpg",
              "Colin_Powell/Colin_Powell_0010.jpg", "Gloria_Macapagal_Arroyo/Gloria_Macapagal_Arroyo_0005.jpg",
              "Tony_Blair/Tony_Blair_0021.jpg", "Jennifer_Lopez/Jennifer_Lopez_0002.jpg",
              "Hugo_Chavez/Hugo_Chavez_0007.jpg", "Kofi_Annan/Kofi_Annan_0004.jpg")
DLIB_FACES_PHOTOS = ("2008_002470.jpg", "2008_007676.jpg", "2009_004587.jpg", "Tom_Cruise_avp_2014_4.jpg")
# our descriptors vs dlib's on the same chips, measured (README): 1 - cosine 3.5e-13, |difference| 4.8e-7 in float64;
# 1 - cosine 1.7e-8 through the embedder's float32 output
DESCRIPTOR_COSINE_GAP, DESCRIPTOR_ABS = 1e-11, 2e-6
EMBEDDER_COSINE_GAP = 1e-7


@pytest.fixture(scope="module")
def descriptor_file() -> Path:
    try:
        return default_descriptor_file()
    except FileNotFoundError as error:
        pytest.skip(str(error))


@pytest.fixture(scope="module")
def model(descriptor_file) -> DlibResNet:
    return load_dlib_resnet(descriptor_file)


@pytest.fixture(scope="module")
def dlib_tools(descriptor_file):
    return (dlib.get_frontal_face_detector(),
            dlib.shape_predictor(str(descriptor_file.parent / "shape_predictor_5_face_landmarks.dat")),
            dlib.face_recognition_model_v1(str(descriptor_file)))


def _dlib_chips(paths, dlib_tools, upsample: int) -> np.ndarray:
    """dlib's own 150-px chips (get_face_chip, padding 0.25) of every face its HOG detector finds."""
    detector, landmarker, _ = dlib_tools
    chips = []
    for path in paths:
        image = read_image(path)
        chips += [dlib.get_face_chip(image, landmarker(image, rect), INPUT_SIZE, 0.25)
                  for rect in detector(image, upsample)]
    return np.stack(chips)


def _ours(model: DlibResNet, chips: np.ndarray) -> np.ndarray:
    x = (torch.from_numpy(chips).permute(0, 3, 1, 2).float() - model.input_mean.reshape(1, 3, 1, 1)) / DLIB_INPUT_SCALE
    with torch.inference_mode():
        return model(x).numpy().astype(np.float64)


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_reader_decodes_dlibs_own_serialisation():
    # dlib pickles a column vector as its serialize() bytes: rows, columns (negative: the current format), values.
    values = [0.5, -300.25, 1e-30, 123456789.0, 0.0]
    state = dlib.vector(values).__getstate__()[0]
    reader = DlibReader(state, Path("vector"), "a vector")
    assert (reader.integer(), reader.integer()) == (-len(values), -1)
    assert [reader.real() for _ in values] == values
    assert reader.offset == len(state)


def test_parse_descriptor_file(descriptor_file):
    network = read_dlib_network(descriptor_file)
    kinds = [layer.kind for layer in network.layers]
    assert network.loss == "loss_metric_2"
    assert network.input_size == (INPUT_SIZE, INPUT_SIZE)
    np.testing.assert_allclose(network.input_mean, DLIB_INPUT_MEAN, atol=1e-4)
    assert {kind: kinds.count(kind) for kind in set(kinds)} == {
        "con": 29, "affine": 29, "relu": 29, "add_prev": 14, "tag_or_skip": 22, "avg_pool": 5, "max_pool": 1, "fc": 1}
    assert network.layers[0].params["weight"].shape == (32, 3, 7, 7)
    assert network.layers[-1].params["weight"].shape == (128, 256)
    assert network.layers[-1].params["bias"] is None


def test_add_zero_padded_matches_dlib_add_prev():
    # dlib's tt::add of differently shaped tensors: the larger extent of each dimension, missing values 0.
    a = torch.arange(18.0).reshape(1, 2, 3, 3)
    b = torch.full((1, 1, 4, 4), 100.0)
    total = add_zero_padded(a, b)
    assert total.shape == (1, 2, 4, 4)
    assert torch.equal(total[0, 0, :3, :3], a[0, 0] + 100)
    assert torch.equal(total[0, 1, :3, :3], a[0, 1])
    assert torch.equal(total[0, 0, 3], torch.full((4,), 100.0))
    assert torch.equal(total[0, 1, 3], torch.zeros(4))


def test_descriptors_match_dlib(model, dlib_tools):
    lfw = shared_path("data", "lfw", "deepfunneled")
    photos = shared_path("data", "detection", "dlib_faces")
    chips = np.concatenate([_dlib_chips([lfw / name for name in LFW_PHOTOS], dlib_tools, upsample=1),
                            _dlib_chips([photos / name for name in DLIB_FACES_PHOTOS], dlib_tools, upsample=1)])
    assert len(chips) >= 20
    reference = np.array([np.array(dlib_tools[2].compute_face_descriptor(chip)) for chip in chips])
    ours = _ours(model, chips)
    cosine = _cosine(ours, reference)
    print(f"{len(chips)} chips: 1 - min cosine {1 - cosine.min():.1e}, "
          f"max |ours - dlib| {np.abs(ours - reference).max():.2e}")
    assert 1 - cosine.min() <= DESCRIPTOR_COSINE_GAP
    assert np.abs(ours - reference).max() <= DESCRIPTOR_ABS


def test_embedder_matches_dlib(descriptor_file, dlib_tools, tmp_path):
    lfw = shared_path("data", "lfw", "deepfunneled")
    chips = _dlib_chips([lfw / name for name in LFW_PHOTOS[:3]], dlib_tools, upsample=1)
    reference = np.array([np.array(dlib_tools[2].compute_face_descriptor(chip)) for chip in chips])
    embedder = build_embedder("dlib_resnet")
    embeddings = embedder.embed_chips(chips).numpy()
    assert embeddings.shape == (len(chips), 128)
    assert embedder.cache_key.startswith("dlib_resnet-")
    assert 1 - _cosine(embeddings, reference).min() <= EMBEDDER_COSINE_GAP
    # Our own state_dict file gives the same network (and another cache key).
    path = tmp_path / "dlib_resnet.pth"
    torch.save(embedder.model.state_dict(), path)
    reloaded = build_embedder("dlib_resnet", weights=path)
    np.testing.assert_allclose(reloaded.embed_chips(chips).numpy(), embeddings, atol=1e-6)
    assert reloaded.cache_key != embedder.cache_key


def test_template_reproduces_dlib_chip_geometry(dlib_tools):
    """Our chip (MTCNN's landmarks aligned to DLIB_TEMPLATE_150) puts dlib's own landmarks close to where dlib's
    chip has them (2.7 px on average over 99 held-out LFW photos in bench/derive_dlib_template.py)."""
    from bench.derive_dlib_template import apply, chip_transform

    detector, landmarker, _ = dlib_tools
    mtcnn = build_detector("mtcnn", device="cpu")
    lfw = shared_path("data", "lfw", "deepfunneled")
    images = [read_image(lfw / name) for name in LFW_PHOTOS]
    errors = []
    for image, detections in zip(images, mtcnn.detect(images)):
        rect = detector(image, 1)[0]
        shape = landmarker(image, rect)
        points = np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)
        centre = (detections.boxes[:, :2] + detections.boxes[:, 2:]) / 2
        ours = detections.landmarks[int(torch.argmin((centre - 125).norm(dim=1)))].numpy()
        similarity = fit_similarity(ours, DLIB_TEMPLATE_150)
        errors.append(np.linalg.norm(apply(similarity, points) - apply(chip_transform(shape), points), axis=1))
    errors = np.concatenate(errors)
    print(f"dlib's landmarks, our chip vs dlib's: mean {errors.mean():.2f} px, max {errors.max():.2f} px")
    assert errors.mean() < 4.0
    assert errors.max() < 12.0


def test_trainable():
    assert_embedder_trains(build_model("dlib_resnet"), INPUT_SIZE, 128, "stem_conv.weight", "embedding.weight")


def test_not_a_dlib_file(tmp_path, descriptor_file):
    text, truncated = broken_copies(tmp_path, descriptor_file, 100_000)
    with pytest.raises(DlibFormatError, match=r"notes\.dat: .*expected a dlib network"):
        load_dlib_resnet(text)
    with pytest.raises(DlibFormatError, match=r"truncated\.dat: file ends early"):
        load_dlib_resnet(truncated)
    detector = descriptor_file.parent / "mmod_human_face_detector.dat"  # a dlib network, but a detector
    with pytest.raises(DlibFormatError, match="loss 'loss_mmod_'"):
        load_dlib_resnet(detector)
    landmarker = descriptor_file.parent / "shape_predictor_5_face_landmarks.dat"  # dlib, but no network
    with pytest.raises(DlibFormatError, match=r"landmarks\.dat: a name of implausible length"):
        load_dlib_resnet(landmarker)
    with pytest.raises(FileNotFoundError, match="missing.dat"):
        load_dlib_resnet(tmp_path / "missing.dat")
    foreign = tmp_path / "foreign.pth"
    torch.save({"conv.weight": torch.zeros(1)}, foreign)
    with pytest.raises(CheckpointError, match=r"foreign\.pth is not a DlibResNet state_dict"):
        build_embedder("dlib_resnet", weights=foreign)


def test_missing_package_message(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "face_recognition_models" else real_find_spec(name, *args))
    with pytest.raises(FileNotFoundError, match="pip install face-recognition-models"):
        build_embedder("dlib_resnet")
