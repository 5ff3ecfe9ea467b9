"""Open Model Zoo's face-reidentification-retail-0095 imported from its OpenVINO IR: the graph the reader finds,
embedding parity with OpenVINO (test-only reference runtime) on MTCNN-aligned LFW chips, a state_dict of ours,
training, and errors for files that are not this IR."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.bench_embedders import lfw_photo_paths
from common.checkpoint import CheckpointError
from common.io import read_image
from common.registry import build_model
from embedding.omz_reid import EMBEDDING_DIM, INPUT_SIZE, OmzReid0095, load_omz_weights
from embedding.openvino_ir import IRFormatError, read_ir
from pipeline import build_detector, build_embedder
from tests.conftest import assert_embedder_trains, shared_path

IR_NAME = "face-reidentification-retail-0095"
PARITY_PHOTOS = 16
LFW_PHOTO_CENTRE = 125.0  # deep-funnelled LFW photos are 250 px with the named person in the middle
# Measured on 16 MTCNN-aligned LFW chips (OpenVINO 2026.4 CPU, f32 inference precision; raw embeddings up to
# |3.67|): max |ours - OpenVINO| 3.2e-6, 1 - min cosine 6.6e-13 (in float64). The bounds are a few times that; a
# wrong channel order differs by 1.6, and OpenVINO's default bf16 inference on this CPU by 0.07 (1 - cosine 2.5e-4).
PARITY_MAX_ABS = 1e-5
PARITY_MAX_COSINE_GAP = 3e-12
PUBLISHED_PARAMETERS = 1_106_808  # the model card's 1.107 M


@pytest.fixture(scope="module")
def ir_xml() -> Path:
    return shared_path("models", "openvino_omz", f"{IR_NAME}.xml")


@pytest.fixture(scope="module")
def embedder(ir_xml):
    """The embedder with its default weights: the shared IR."""
    return build_embedder("omz0095")


def _lfw_chips(embedder) -> np.ndarray:
    """(N, 128, 128, 3) uint8 RGB chips: the central face of each LFW photo, aligned by MTCNN's landmarks."""
    shared_path("data", "lfw", "pairs.txt")
    images = [read_image(path) for path in lfw_photo_paths(PARITY_PHOTOS)]
    chips = []
    for image, detections in zip(images, build_detector("mtcnn", device="cpu").detect(images)):
        centres = (detections.boxes[:, :2] + detections.boxes[:, 2:]) / 2  # (F, 2)
        face = int(torch.argmin((centres - LFW_PHOTO_CENTRE).norm(dim=1)))
        chips.append(embedder.alignment.align(image, detections.landmarks[face:face + 1].numpy()))
    return np.concatenate(chips)


def test_reader_finds_the_published_graph(ir_xml):
    graph = read_ir(ir_xml)
    types = [layer.type for layer in graph.operations()]
    assert {kind: types.count(kind) for kind in set(types)} == {
        "Parameter": 1, "Multiply": 16, "Add": 92, "Convolution": 63, "GroupConvolution": 17, "PReLU": 48,
        "AvgPool": 15, "Sigmoid": 15, "Result": 1}
    assert graph.conversion_parameters["reverse_input_channels"] == "True"
    assert all(value.dtype == np.float32 for value in graph.constants.values())  # f16 in the .bin
    stem = next(layer for layer in graph.operations() if layer.type == "Convolution")
    assert graph.constant(graph.inputs(stem)[1]).shape == (64, 3, 3, 3)
    model = build_model("omz_reid_0095")
    assert sum(parameter.numel() for parameter in model.parameters()) == PUBLISHED_PARAMETERS


def test_embeddings_match_openvino(ir_xml, embedder):
    ov = pytest.importorskip("openvino", reason="OpenVINO (pip install openvino) is the parity reference")
    chips = _lfw_chips(embedder)
    assert len(chips) == PARITY_PHOTOS
    compiled = ov.Core().compile_model(str(ir_xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    bgr = chips[..., ::-1].transpose(0, 3, 1, 2).astype(np.float32)  # (N, 3, 128, 128) BGR 0-255, as the IR takes
    reference = np.concatenate([compiled(chip[None])[0].reshape(1, -1) for chip in bgr])  # (N, 256)
    with torch.inference_mode():
        ours = embedder.model(embedder.preprocess(chips).to(embedder.device)).cpu().numpy()  # (N, 256)
    reference, ours = reference.astype(np.float64), ours.astype(np.float64)
    cosine = (ours * reference).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(reference, axis=1)
    worst = np.abs(ours - reference).max()
    print(f"{len(chips)} chips: max |ours - OpenVINO| {worst:.2e}, 1 - min cosine {1 - cosine.min():.1e}")
    assert ours.shape == (PARITY_PHOTOS, EMBEDDING_DIM)
    assert worst <= PARITY_MAX_ABS
    assert 1 - cosine.min() <= PARITY_MAX_COSINE_GAP


def test_state_dict_of_ours_gives_the_same_embedder(embedder, tmp_path):
    path = tmp_path / "omz_reid.pth"
    torch.save(embedder.model.state_dict(), path)
    reloaded = build_embedder("omz0095", weights=path)
    chips = np.random.default_rng(0).integers(0, 256, (2, INPUT_SIZE, INPUT_SIZE, 3), dtype=np.uint8)
    assert torch.equal(reloaded.embed_chips(chips), embedder.embed_chips(chips))
    assert reloaded.mean.equal(embedder.mean) and reloaded.std.equal(embedder.std)
    assert reloaded.cache_key != embedder.cache_key
    foreign = tmp_path / "foreign.pth"
    torch.save({"conv.weight": torch.zeros(1)}, foreign)
    with pytest.raises(CheckpointError, match=r"foreign\.pth is not an OmzReid0095 state_dict"):
        build_embedder("omz0095", weights=foreign)


def test_trainable():
    assert_embedder_trains(build_model("omz_reid_0095"), INPUT_SIZE, EMBEDDING_DIM, "stem.conv.weight",
                           "embedding.weight")


def _ir_copy(folder: Path, ir_xml: Path, xml_text: str | None = None, bin_bytes: int | None = None) -> Path:
    """``folder/model.xml`` and ``model.bin``: the IR, its XML text or the first ``bin_bytes`` of its .bin replaced."""
    xml = folder / "model.xml"
    if xml_text is None:
        shutil.copyfile(ir_xml, xml)
    else:
        xml.write_text(xml_text)
    weights = ir_xml.with_suffix(".bin").read_bytes()
    xml.with_suffix(".bin").write_bytes(weights if bin_bytes is None else weights[:bin_bytes])
    return xml


def test_not_this_ir(ir_xml, tmp_path):
    with pytest.raises(IRFormatError, match=r"model\.bin: truncated or not this IR's weights"):
        load_omz_weights(OmzReid0095(), _ir_copy(tmp_path, ir_xml, bin_bytes=100_000))
    with pytest.raises(IRFormatError, match=r"model\.xml: not an OpenVINO IR v11 \.xml \(unparsable"):
        load_omz_weights(OmzReid0095(), _ir_copy(tmp_path, ir_xml, xml_text="this is not a model\n"))
    with pytest.raises(IRFormatError, match=r"model\.xml: not an OpenVINO IR v11 \.xml \(its root is <html>"):
        load_omz_weights(OmzReid0095(), _ir_copy(tmp_path, ir_xml, xml_text="<html><body/></html>"))
    # An IR whose stem no longer halves the resolution: the importer names the layer and what differs.
    restrided = ir_xml.read_text().replace('strides="2, 2"', 'strides="1, 1"', 1)
    with pytest.raises(IRFormatError, match=r"layer 9 'Multiply_8175' \(Convolution\): strides.*stem\.conv"):
        load_omz_weights(OmzReid0095(), _ir_copy(tmp_path, ir_xml, xml_text=restrided))
    xml = _ir_copy(tmp_path, ir_xml)
    xml.with_suffix(".bin").unlink()
    with pytest.raises(FileNotFoundError, match=r"weights \(\.bin\) file not found: .*model\.bin"):
        build_embedder("omz0095", weights=xml)
    with pytest.raises(FileNotFoundError, match=r"missing\.xml.*pass weights=PATH"):
        build_embedder("omz0095", weights=tmp_path / "missing.xml")
