"""ONNX export of every registered network, and the onnxruntime backend: onnxruntime's outputs against PyTorch's on
real photos at batch sizes 1 and 3, detections and embeddings through the swapped networks, infer.py
--backend onnxruntime, and the export command line.

Tolerance: |onnxruntime - torch| <= 1e-5 x max(1, that sample's largest |output|): 1e-5 absolute while a sample's
outputs are within +-1, 1e-5 relative above (BlazeFace's raw scores reach -600, RetinaFace's inputs are +-128 and
YuNet's 0-255, and their outputs follow). Measured on these photos: at most 4.7e-6 of the scale (RetinaFace; BlazeFace
front 3.1e-4 absolute on outputs up to 209, 1.5e-6 relative; every other network <= 2.1e-6). Embeddings are compared
L2-normalised (what ``embed_chips`` returns) at 3e-5 absolute (measured <= 7.6e-6)."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bench.bench_embedders import LFW_FACE_BOX, lfw_photo_paths
from common.config import project_path
from common.errors import InputError
from common.export import OnnxRunner, cached_export, net_spec, network_slots, use_onnxruntime
from common.io import read_image
from common.registry import DETECTORS, build_model
from detection.blazeface.detector import normalize as blazeface_normalize
from detection.retinaface.detector import preprocess as retinaface_preprocess
from detection.yunet.detector import preprocess as yunet_preprocess
from pipeline import (build_embedder, default_config_path, detection_config, detector_from_config, list_embedders,
                      list_models)
from pipeline.export import main as export_main
from pipeline.export import networks_of
from embedding.align import margin_crop
from embedding.dlib_resnet import DLIB_INPUT_MEAN, DLIB_INPUT_SCALE
from tests.conftest import shared_path

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

PARITY_TOL = 1e-5
EMBEDDING_TOL = 3e-5
BOX_TOL_PX = 1e-2
JSON_BOX_TOL_PX = 0.011  # infer.py's JSON rounds to 0.01 px: a rounding step either side
JSON_SCORE_TOL = 1.1e-5  # ... and scores to 1e-5
PHOTOS = ("faces_in_photos/compreface/016_8.jpg", "detection/dlib_faces/2008_002470.jpg",
          "faces_in_photos/compreface/009_C.jpg")
# fully convolutional networks run on sizes other than the traced 320x320, per batch size: (height, width), multiples
# of 32 as the detectors pad them (YOLO's upsampling needs that)
FREE_SIZES = {1: (224, 320), 3: (288, 192)}
# registered models whose published weights the project holds offline: (detector or embedder, its network)
REAL_WEIGHTS = {"blazeface_front": ("blazeface", "model"), "mtcnn_pnet": ("mtcnn", "pnet"),
                "mtcnn_rnet": ("mtcnn", "rnet"), "mtcnn_onet": ("mtcnn", "onet"),
                "retinaface_mnet025": ("retinaface", "model"), "dlib_resnet": ("dlib_resnet", "model"),
                "omz_reid_0095": ("omz0095", "model"), "sface": ("sface", "model"), "yunet_n": ("yunet", "model")}
# ResNet-50 RetinaFace and FaceNet (the model and its embedder): ~15 s or more each to export and run on 2 cores
SLOW = {"retinaface_r50", "inception_resnet_v1", "facenet"}
# other test modules register their own tiny networks under names that start with this
TEST_REGISTERED_PREFIX = "test_"


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    return [read_image(shared_path("data", *relative.split("/"))) for relative in PHOTOS]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("onnx_cache")


def _network(name: str) -> torch.nn.Module:
    """The registered model ``name`` with the project's offline weights as its detector or embedder runs it (BN
    folded), else randomly initialised (seeded)."""
    if name in REAL_WEIGHTS:
        shared_path("models")
        holder, role = REAL_WEIGHTS[name]
        return networks_of(holder)[role]
    torch.manual_seed(0)
    return build_model(name).eval()


def _net_inputs(name: str, photos: list[np.ndarray], height: int, width: int) -> torch.Tensor:
    """Real photos resized to (height, width), normalised as the detector or embedder running ``name`` does;
    other models get ``(pixel - 127.5) / 128`` (MTCNN's, FaceNet's and MobileFaceNet's range)."""
    pixels = np.stack([cv2.resize(photo, (width, height), interpolation=cv2.INTER_AREA) for photo in photos])
    batch = torch.from_numpy(pixels).permute(0, 3, 1, 2)  # (B, 3, H, W) uint8
    if name.startswith("blazeface"):
        return blazeface_normalize(batch)
    if name.startswith("retinaface"):
        return retinaface_preprocess(batch)
    if name.startswith("yunet"):
        return yunet_preprocess(batch)
    if name == "dlib_resnet":
        return (batch.float() - torch.tensor(DLIB_INPUT_MEAN).view(1, 3, 1, 1)) / DLIB_INPUT_SCALE
    return (batch.float() - 127.5) / 128.0


def _assert_parity(ours: torch.Tensor, reference: torch.Tensor, what: str) -> None:
    assert ours.shape == reference.shape, f"{what}: shape {tuple(ours.shape)} vs torch {tuple(reference.shape)}"
    scale = reference.abs().flatten(1).amax(1).clamp(min=1.0)  # (B,) each sample's largest |output|, at least 1
    difference = (ours - reference).abs().flatten(1).amax(1)  # (B,)
    worst = int((difference / scale).argmax())
    assert (difference <= PARITY_TOL * scale).all(), (
        f"{what}: sample {worst} differs by {difference[worst]:.3g} (its largest |output| {scale[worst]:.3g})")


def _as_tuple(outputs) -> tuple[torch.Tensor, ...]:
    return tuple(outputs) if isinstance(outputs, (tuple, list)) else (outputs,)


def _params(names: list[str]) -> list:
    """The project's registered names (not those other test modules register for themselves), slow ones marked."""
    ours = [name for name in names if not name.startswith(TEST_REGISTERED_PREFIX)]
    return [pytest.param(name, marks=pytest.mark.slow) if name in SLOW else name for name in ours]


@pytest.mark.parametrize("name", _params(list_models()))
def test_network_outputs_match_torch(name, photos, cache):
    network = _network(name)
    spec = net_spec(network)
    path = cached_export(network, cache)
    onnx.checker.check_model(onnx.load(str(path)))
    runner = OnnxRunner(path)
    for batch_size in (1, 3):
        height, width = (spec.input_size,) * 2 if spec.input_size else FREE_SIZES[batch_size]
        inputs = _net_inputs(name, photos[:batch_size], height, width)
        with torch.inference_mode():
            reference = _as_tuple(network(inputs))
        outputs = _as_tuple(runner(inputs))
        assert len(outputs) == len(reference) == len(spec.output_names)
        for output_name, ours, theirs in zip(spec.output_names, outputs, reference):
            _assert_parity(ours, theirs, f"{name} {output_name}, batch {batch_size}, {height}x{width}")


def test_dynamic_axes_are_declared(cache):
    """Fixed-size networks take any batch; fully convolutional ones any batch, height and width."""
    for name, expected in (("mtcnn_rnet", ["batch", 3, 24, 24]), ("mtcnn_pnet", ["batch", 3, "height", "width"])):
        graph = onnx.load(str(cached_export(build_model(name).eval(), cache))).graph
        dims = [dim.dim_param or dim.dim_value for dim in graph.input[0].type.tensor_type.shape.dim]
        assert dims == expected, name
        assert all(output.type.tensor_type.shape.dim[0].dim_param == "batch" for output in graph.output)


def _detector(name: str):
    """The detector of ``name``'s default config; skips when the config's weights are not on this machine (YOLO's
    come from a training run; its network is checked in ``test_network_outputs_match_torch``)."""
    shared_path("models")
    cfg = detection_config(name, default_config_path(name))
    weights = cfg.get("model", {}).get("weights")
    if weights and not project_path(weights).is_file():
        pytest.skip(f"{name}: the weights of {default_config_path(name).name} ({weights}) are not here")
    return detector_from_config(cfg, "cpu")


@pytest.mark.parametrize("name", DETECTORS.names())
def test_detections_match_torch(name, photos, cache):
    """The whole detector (pre-processing, tiles or pyramid, post-processing) with its networks swapped."""
    detector = _detector(name)
    batches = (photos[:1], photos)
    reference = [detector.detect(batch) for batch in batches]
    use_onnxruntime(detector, cache)
    assert not any(isinstance(value, torch.nn.Module) for value in vars(detector).values())
    for batch, expected in zip(batches, reference):
        for found, wanted in zip(detector.detect(batch), expected):
            assert len(found) == len(wanted) > 0
            np.testing.assert_allclose(found.boxes, wanted.boxes, atol=BOX_TOL_PX)
            np.testing.assert_allclose(found.landmarks, wanted.landmarks, atol=BOX_TOL_PX)
            np.testing.assert_allclose(found.scores, wanted.scores, atol=PARITY_TOL)


def test_fusion_detectors_networks_are_all_swapped(cache):
    """A fusion detector holds its detectors in a dict: every network in them is found and swapped."""
    shared_path("models")
    fusion = _detector("fusion")
    roles = [role for _, _, role, _ in network_slots(fusion)]
    assert {role.split(".")[0] for role in roles} == set(fusion.detectors)  # every detector holds networks
    if "mtcnn" in fusion.detectors:
        assert {"mtcnn.pnet", "mtcnn.rnet", "mtcnn.onet"} <= set(roles)
    use_onnxruntime(fusion, cache)
    assert list(network_slots(fusion)) == []
    for detector in fusion.detectors.values():
        assert not any(isinstance(value, torch.nn.Module) for value in vars(detector).values())


@pytest.mark.parametrize("name", _params(list_embedders()))
def test_embeddings_match_torch(name, cache):
    shared_path("data", "lfw", "pairs.txt")
    torch.manual_seed(0)
    embedder = build_embedder(name)
    size = embedder.alignment.size
    chips = np.concatenate([margin_crop(read_image(path), np.array([LFW_FACE_BOX]), size)
                            for path in lfw_photo_paths(3)])  # (3, S, S, 3)
    reference = [embedder.embed_chips(chips[:count]) for count in (1, 3)]
    use_onnxruntime(embedder, cache)
    for count, expected in zip((1, 3), reference):
        embeddings = embedder.embed_chips(chips[:count])
        assert embeddings.shape == expected.shape
        np.testing.assert_allclose(F.normalize(embeddings), expected, atol=EMBEDDING_TOL)


def test_infer_onnxruntime_backend_gives_torch_detections(tmp_path):
    import infer

    photo = shared_path("data", "faces_in_photos", "compreface", "016_8.jpg")
    shared_path("models")
    found = {}
    for backend in ("torch", "onnxruntime"):
        out = tmp_path / f"{backend}.json"
        extra = ["--onnx-dir", str(tmp_path / "onnx")] if backend == "onnxruntime" else []
        assert infer.main(["--detector", "retinaface", "--input", str(photo), "--out", str(out),
                           "--backend", backend, *extra]) == 0
        found[backend] = json.loads(out.read_text())[str(photo)]
    assert len(list((tmp_path / "onnx").glob("retinaface-*.onnx"))) == 1
    assert len(found["onnxruntime"]) == len(found["torch"]) == 8  # the eight people of the photo
    for ours, theirs in zip(found["onnxruntime"], found["torch"]):
        np.testing.assert_allclose(ours["box"], theirs["box"], atol=JSON_BOX_TOL_PX)
        np.testing.assert_allclose(ours["landmarks"], theirs["landmarks"], atol=JSON_BOX_TOL_PX)
        assert abs(ours["score"] - theirs["score"]) <= JSON_SCORE_TOL


def test_export_command_writes_a_detectors_networks(tmp_path, capsys):
    assert export_main(["--model", "mtcnn", "--out", str(tmp_path)]) == 0
    written = sorted(path.name.split("-")[0] for path in tmp_path.glob("*.onnx"))
    assert written == ["onet", "pnet", "rnet"]
    assert "pnet: " in capsys.readouterr().out
    runner = OnnxRunner(next(tmp_path.glob("pnet-*.onnx")))
    offsets, logits = runner(torch.zeros(2, 3, 50, 70))
    assert offsets.shape == (2, 4, 20, 30) and logits.shape == (2, 2, 20, 30)  # one cell per 12-px window, stride 2


def test_export_errors_name_what_exists(tmp_path):
    with pytest.raises(InputError, match=r"nothing to export called 'mtcnnn'.*mtcnn_pnet"):
        networks_of("mtcnnn")
    with pytest.raises(FileNotFoundError, match=r"missing\.onnx"):
        OnnxRunner(tmp_path / "missing.onnx")
    with pytest.raises(ValueError, match="holds no PyTorch network"):
        use_onnxruntime(type("Empty", (), {"detect": None})())

