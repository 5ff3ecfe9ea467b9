"""SFace imported from OpenCV Zoo's int8 block-quantised ONNX file: embeddings against onnxruntime running the file
itself on MTCNN-aligned LFW chips, the dequantisation against onnxruntime's, our own state_dict files, training,
and errors for files that are not SFace's graph."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from common.checkpoint import CheckpointError
from common.errors import UserError
from common.export import export_onnx
from common.io import read_image
from common.registry import build_model
from embedding.mobilefacenet import MobileFaceNet
from embedding.sface import (INPUT_SIZE, ONNX_FILE, SFace, SFaceFormatError, dequantize, load_sface_onnx,
                             read_sface_graph)
from pipeline import build_detector, build_embedder
from tests.conftest import assert_embedder_trains, broken_copies, shared_path

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

LFW_PHOTOS = ("Aaron_Eckhart/Aaron_Eckhart_0001.jpg", "Serena_Williams/Serena_Williams_0003.jpg",
              "Serena_Williams/Serena_Williams_0010.jpg", "Colin_Powell/Colin_Powell_0010.jpg",
              "Gloria_Macapagal_Arroyo/Gloria_Macapagal_Arroyo_0005.jpg",
              "Gloria_Macapagal_Arroyo/Gloria_Macapagal_Arroyo_0010.jpg", "Tony_Blair/Tony_Blair_0021.jpg",
              "Jennifer_Lopez/Jennifer_Lopez_0002.jpg", "Hugo_Chavez/Hugo_Chavez_0007.jpg",
              "Kofi_Annan/Kofi_Annan_0004.jpg", "Zhang_Ziyi/Zhang_Ziyi_0001.jpg",
              "Venus_Williams/Venus_Williams_0002.jpg", "Junichiro_Koizumi/Junichiro_Koizumi_0003.jpg",
              "Nelson_Mandela/Nelson_Mandela_0002.jpg", "Yoko_Ono/Yoko_Ono_0001.jpg",
              "Vladimir_Putin/Vladimir_Putin_0005.jpg")
LFW_PHOTO_CENTRE = 125.0  # deep funnelling centres the photo's person in the 250-px photo
IMAGE_INPUT = "data"  # the file's real input; the other graph inputs without an initializer are stale
STALE_INPUTS = 29  # as PROVENANCE.md says
ORT_THREADS = 2
SFACE_COSINE_THRESHOLD = 0.363  # OpenCV's FaceRecognizerSF: same person above this cosine
# Measured over the 16 chips (onnxruntime 1.32, torch 2.14.1, 2 CPU cores): the raw 128-d embeddings (entries up
# to 4.54) differ by at most 3.9e-6 (float32 rounding: 8 units in the last place of the largest), 1 - min cosine
# 6.7e-13 (in float64), the L2-normalised ones by at most 3.6e-7. Bounds: 5 times the differences; 1 - cosine
# grows with the square of the difference, so 15 times.
RAW_ATOL = 2e-5
UNIT_ATOL = 2e-6
COSINE_ATOL = 1e-11


@pytest.fixture(scope="module")
def onnx_file() -> Path:
    return shared_path("models", "sface", ONNX_FILE)


@pytest.fixture(scope="module")
def embedder(onnx_file):
    return build_embedder("sface")


@pytest.fixture(scope="module")
def onnxruntime_session(onnx_file):
    """onnxruntime running the file itself, its stale graph inputs removed in memory (onnxruntime refuses them)."""
    model = onnx.load(str(onnx_file))
    graph = model.graph
    backed = {tensor.name for tensor in graph.initializer}
    stale = [item for item in graph.input if item.name not in backed and item.name != IMAGE_INPUT]
    assert len(stale) == STALE_INPUTS and IMAGE_INPUT in [item.name for item in graph.input]
    for item in stale:
        graph.input.remove(item)
    options = ort.SessionOptions()
    options.intra_op_num_threads = ORT_THREADS
    options.log_severity_level = 3  # not the warning per initializer that is also listed as a graph input
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def lfw_chips(embedder) -> np.ndarray:
    """(16, 112, 112, 3) uint8 chips: each photo's centre face, aligned by MTCNN's landmarks as the embedder does."""
    root = shared_path("data", "lfw", "deepfunneled")
    images = [read_image(root / name) for name in LFW_PHOTOS]
    chips = []
    for image, detections in zip(images, build_detector("mtcnn", device="cpu").detect(images)):
        centres = (detections.boxes[:, :2] + detections.boxes[:, 2:]) / 2  # (N, 2)
        face = int(torch.argmin((centres - LFW_PHOTO_CENTRE).norm(dim=1)))
        chips.append(embedder.alignment.align(image, detections.landmarks[face:face + 1]))
    return np.concatenate(chips)


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine, in float64 (float32's own rounding, 1e-7, would hide a difference of 1e-11)."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_embeddings_match_onnxruntime_on_lfw_chips(embedder, onnxruntime_session, lfw_chips):
    pixels = lfw_chips.transpose(0, 3, 1, 2).astype(np.float32)  # (16, 3, 112, 112) RGB 0-255: the file's input
    reference = np.concatenate([onnxruntime_session.run(None, {IMAGE_INPUT: chip[None]})[0]
                                for chip in pixels])  # (16, 128); the file's batch axis is fixed at 1
    with torch.inference_mode():
        raw = embedder.model(embedder.preprocess(lfw_chips)).numpy()  # (16, 128)
    difference, cosine = np.abs(raw - reference).max(), _cosine(raw, reference)
    print(f"{len(lfw_chips)} chips: max |ours - onnxruntime| {difference:.2e} (largest |value| "
          f"{np.abs(reference).max():.2f}), 1 - min cosine {1 - cosine.min():.1e}")
    assert raw.shape == (len(LFW_PHOTOS), 128)
    assert difference <= RAW_ATOL
    assert cosine.min() >= 1 - COSINE_ATOL
    unit = embedder.embed_chips(lfw_chips)  # what the pipeline stores
    np.testing.assert_allclose(unit.numpy(), F.normalize(torch.from_numpy(reference)).numpy(), atol=UNIT_ATOL)
    # the faces' embeddings differ (cosines down to -0.09), so agreeing this closely is a real check; and the real
    # weights are loaded: two photos of one person are above OpenCV's threshold
    similarity = unit @ unit.T  # (16, 16)
    assert similarity.min() < 0.2
    for first, second in ((1, 2), (4, 5)):  # Serena Williams' and Gloria Macapagal Arroyo's two photos
        assert similarity[first, second] > SFACE_COSINE_THRESHOLD


def test_dequantize_matches_onnxruntime_on_partial_blocks():
    """Blocked DequantizeLinear with a last block shorter than block_size (SFace's own blocks all divide)."""
    rng = np.random.default_rng(0)
    quantized = rng.integers(-128, 128, (3, 10), dtype=np.int8)
    scale = rng.uniform(0.01, 0.1, (3, 3)).astype(np.float32)  # blocks of 4 along axis 1: 4, 4, 2
    zero_point = rng.integers(-5, 5, (3, 3), dtype=np.int8)
    make = onnx.helper
    node = make.make_node("DequantizeLinear", ["x", "scale", "zero_point"], ["y"], axis=1, block_size=4)
    graph = make.make_graph([node], "dequantize", [make.make_tensor_value_info("x", onnx.TensorProto.INT8, [3, 10])],
                            [make.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [3, 10])],
                            [onnx.numpy_helper.from_array(scale, "scale"),
                             onnx.numpy_helper.from_array(zero_point, "zero_point")])
    model = make.make_model(graph, opset_imports=[make.make_opsetid("", 21)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = session.run(None, {"x": quantized})[0]
    np.testing.assert_array_equal(dequantize(quantized, scale, zero_point, axis=1, block_size=4), expected)


def test_graph_is_read_in_order(onnx_file):
    operators = read_sface_graph(onnx_file)
    assert [operator.op for operator in operators[:5]] == ["Sub", "Mul", "Conv", "BatchNormalization", "PRelu"]
    counts = {op: sum(operator.op == op for operator in operators) for op in {operator.op for operator in operators}}
    assert counts == {"Sub": 1, "Mul": 1, "Conv": 27, "BatchNormalization": 29, "PRelu": 27, "Dropout": 1,
                      "Flatten": 1, "Gemm": 1}
    gemm = operators[-2]
    assert [(name, value.shape, value.dtype) for name, value in gemm.constants] == [
        ("pre_fc1_weight_dequantized", (128, 50176), np.float32), ("pre_fc1_bias_dequantized", (128,), np.float32)]


def test_own_state_dict_file_gives_the_same_network(embedder, lfw_chips, tmp_path):
    path = tmp_path / "sface.pth"
    torch.save(embedder.model.state_dict(), path)
    reloaded = build_embedder("sface", weights=path)
    assert embedder.cache_key.startswith("sface-") and reloaded.cache_key != embedder.cache_key
    assert torch.equal(reloaded.embed_chips(lfw_chips[:2]), embedder.embed_chips(lfw_chips[:2]))
    foreign = tmp_path / "foreign.pth"
    torch.save({"conv.weight": torch.zeros(1)}, foreign)
    with pytest.raises(CheckpointError, match=r"foreign\.pth is not an SFace state_dict"):
        build_embedder("sface", weights=foreign)


def test_broken_files_are_named_in_one_clear_error(onnx_file, tmp_path):
    text, truncated = broken_copies(tmp_path, onnx_file, 100_000)
    for path in (text, truncated):
        with pytest.raises(SFaceFormatError, match=rf"{path.name}: ") as caught:
            load_sface_onnx(path)
        assert isinstance(caught.value, UserError)
    with pytest.raises(FileNotFoundError, match=r"missing\.onnx"):
        build_embedder("sface", weights=tmp_path / "missing.onnx")


def test_a_tensor_of_another_shape_is_named(onnx_file, tmp_path):
    model = onnx.load(str(onnx_file))
    tensor = next(item for item in model.graph.initializer if item.name == "conv_5_batchnorm_gamma")
    tensor.CopyFrom(onnx.numpy_helper.from_array(np.ones(255, dtype=np.float32), tensor.name))
    path = tmp_path / "reshaped.onnx"
    onnx.save(model, str(path))
    with pytest.raises(SFaceFormatError, match=r"reshaped\.onnx operator .*'conv_5_batchnorm_gamma' has shape "
                                               r"\(255,\), SFace's batch norm scale needs \(256,\)"):
        load_sface_onnx(path)


def test_another_networks_graph_is_refused(tmp_path):
    path = export_onnx(MobileFaceNet().eval(), tmp_path / "mobilefacenet.onnx")
    with pytest.raises(SFaceFormatError, match=r"mobilefacenet\.onnx: 96 operators on the data path, not SFace's 88; "
                                               r"operator 0 .* is Conv, SFace has Sub"):
        load_sface_onnx(path)


def test_trainable():
    model = build_model("sface")
    assert isinstance(model, SFace)
    assert_embedder_trains(model, INPUT_SIZE, 128, "stem.conv.weight", "fc.weight")
