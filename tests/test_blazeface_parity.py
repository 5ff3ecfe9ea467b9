"""BlazeFace: parity of the imported MediaPipe weights with the TFLite interpreter on real photos,
BN folding, trainability, and the importer's error handling."""
from pathlib import Path

import numpy as np
import pytest
import torch

from common.registry import build_model
from detection.blazeface.mediapipe_import import MediaPipeImportError, load_mediapipe_weights, main
from detection.blazeface.model import BlazeFace, BlazeFaceFullRange, depth_to_space, fuse_batchnorm

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SHORT_RANGE = SHARED / "models/mediapipe/face_detection_short_range.tflite"
FULL_RANGE = SHARED / "models/mediapipe/face_detection_full_range_sparse.tflite"
PHOTO_GLOBS = ("data/detection/dlib_faces/*.jpg", "data/faces_in_photos/compreface/*.jpg")

# Raw outputs reach several hundred (scores down to -600, regressors ~260), and fp32 summation order
# alone then moves the last digits: TFLite's own XNNPACK and builtin kernels differ by up to 6.1e-4.
# Measured (README): short range 2.3e-4 / 5.5e-4 absolute (regressors / scores), 2.5e-6 / 1.1e-5 relative to the
# anchor's largest output; full range 1.3e-4 / 2.1e-4, 2.5e-6 / 5.2e-6. The bounds: 1e-3 absolute, and 2e-5
# relative to max(1, the anchor's largest output).
PARITY_ABS, PARITY_TOL = 1e-3, 2e-5


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} not found: the read-only ../shared folder (MediaPipe models, photos) is absent")
    return path


def _load_photos(size: int) -> torch.Tensor:
    """Real photos as (N, 3, size, size) float in [-1, 1] (MediaPipe's x / 127.5 - 1)."""
    Image = pytest.importorskip("PIL.Image")
    ImageOps = pytest.importorskip("PIL.ImageOps")
    files = sorted(f for pattern in PHOTO_GLOBS for f in _require(SHARED).glob(pattern))
    if not files:
        pytest.skip(f"no photos under {SHARED} matching {PHOTO_GLOBS}")
    images = []
    for f in files:
        with Image.open(f) as im:
            rgb = ImageOps.exif_transpose(im).convert("RGB").resize((size, size), Image.BILINEAR)
        images.append(np.asarray(rgb, dtype=np.float32) / 127.5 - 1.0)
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()  # (N, 3, S, S)


@pytest.fixture(scope="module")
def photos() -> torch.Tensor:
    return _load_photos(128)


def _import_front() -> BlazeFace:
    pytest.importorskip("tflite", reason="the `tflite` flatbuffer parser is needed to read .tflite weights")
    return load_mediapipe_weights(BlazeFace("front"), _require(SHORT_RANGE))


@pytest.fixture(scope="module")
def imported() -> BlazeFace:
    return _import_front().eval()


def _interpret(model_path: Path, photos: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """MediaPipe's TFLite interpreter on the photos, one image per invoke: (N, A, 16), (N, A)."""
    litert = pytest.importorskip("ai_edge_litert.interpreter")
    interpreter = litert.Interpreter(model_path=str(model_path), num_threads=2)
    interpreter.allocate_tensors()
    input_index = interpreter.get_input_details()[0]["index"]
    # The two outputs are told apart by shape: regressors (1, A, 16), classificators (1, A, 1).
    outputs = {d["shape"][-1]: d["index"] for d in interpreter.get_output_details()}
    regressors, scores = [], []
    for image in photos.permute(0, 2, 3, 1).numpy():  # NHWC
        interpreter.set_tensor(input_index, image[None])
        interpreter.invoke()
        regressors.append(interpreter.get_tensor(outputs[16])[0])  # (A, 16)
        scores.append(interpreter.get_tensor(outputs[1])[0, :, 0])  # (A,)
    return np.stack(regressors), np.stack(scores)


def _assert_close(ours: np.ndarray, ref: np.ndarray, what: str) -> None:
    """``ours``/``ref``: (N, 896, C) per-anchor outputs (C = 16 regressors, or 1 score)."""
    err = np.abs(ours - ref)
    scale = np.maximum(1.0, np.abs(ref).max(axis=-1, keepdims=True))
    assert err.max() <= PARITY_ABS and (err / scale).max() <= PARITY_TOL, (
        f"{what}: max |diff| {err.max():.3g} (bound {PARITY_ABS}), max |diff| / anchor scale "
        f"{(err / scale).max():.3g} (bound {PARITY_TOL})")


@pytest.fixture(scope="module")
def full_range():
    pytest.importorskip("tflite", reason="the `tflite` flatbuffer parser is needed to read .tflite weights")
    return load_mediapipe_weights(BlazeFaceFullRange(), _require(FULL_RANGE)).eval()


@pytest.mark.parametrize("fused", [False, True], ids=["trainable", "bn_folded"])
@pytest.mark.parametrize("variant, tflite, size, anchors", [("front", SHORT_RANGE, 128, 896),
                                                            ("full", FULL_RANGE, 192, 2304)])
def test_imported_model_matches_tflite_interpreter(request, variant, tflite, size, anchors, fused):
    """Short range; and full range, its sparse fp16 weights (DENSIFY) expanded, its bottleneck blocks, bilinear
    top-down path and depth-to-space heads: the interpreter's raw outputs on real photos."""
    imported = request.getfixturevalue("imported" if variant == "front" else "full_range")
    photos = _load_photos(size)
    ref_regressors, ref_scores = _interpret(tflite, photos)
    model = fuse_batchnorm(imported) if fused else imported
    with torch.inference_mode():
        regressors, scores = model(photos)
    assert regressors.shape == (len(photos), anchors, 16) and scores.shape == (len(photos), anchors)
    _assert_close(regressors.numpy(), ref_regressors, "raw regressors")
    _assert_close(scores.numpy()[..., None], ref_scores[..., None], "raw scores")
    # The photos contain faces: the detector must fire on them, or the comparison is vacuous.
    assert (ref_scores > 0).sum() >= len(photos) // 2


def test_depth_to_space_is_tensorflows():
    x = torch.arange(2 * 8 * 3 * 3, dtype=torch.float32).reshape(2, 8, 3, 3)  # (B, 4 · C, H, W), C = 2
    tensorflow = x.permute(0, 2, 3, 1).reshape(2, 3, 3, 2, 2, 2)  # NHWC, channels as (i, j, c)
    expected = tensorflow.permute(0, 1, 3, 2, 4, 5).reshape(2, 6, 6, 2).permute(0, 3, 1, 2)  # (B, C, 2H, 2W)
    assert torch.equal(depth_to_space(x, 2), expected)


def test_imported_batchnorm_is_exact_identity(imported):
    """BN carries the folded bias in beta; its scaling must be exactly 1 (gamma=1, mean=0, var=1-eps)."""
    bns = [m for m in imported.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == 1 + 2 * 16  # stem + (depthwise, pointwise) per block
    for bn in bns:
        x = torch.randn(2, bn.num_features, 4, 4)
        scaled = torch.nn.functional.batch_norm(
            x, bn.running_mean, bn.running_var, bn.weight, None, training=False, eps=bn.eps
        )
        assert torch.equal(scaled, x)


def _randomise_batchnorm(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.weight.data = torch.rand(n, generator=g) + 0.5
            m.bias.data = torch.randn(n, generator=g) * 0.1
            m.running_mean = torch.randn(n, generator=g) * 0.1
            m.running_var = torch.rand(n, generator=g) + 0.5


@pytest.mark.parametrize("source", ["mediapipe", "random_bn"])
def test_fused_batchnorm_matches_unfused(source, photos):
    """Checked in float64, where folding is exact up to ~1e-12, so 1e-4 absolute is a hard bound
    (in float32 the two differ by rounding only; the interpreter test covers the fused fp32 model)."""
    if source == "mediapipe":
        model = _import_front()
    else:
        torch.manual_seed(0)
        model = BlazeFace("front")
        _randomise_batchnorm(model, seed=0)
    model = model.double().eval()
    fused = fuse_batchnorm(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()), "original must be untouched"
    with torch.inference_mode():
        for ours, ref in zip(fused(photos.double()), model(photos.double())):
            assert (ours - ref).abs().max().item() <= 1e-4


def test_model_trains(photos):
    model = _import_front().train()
    bn = model.backbone.stage1[3].pw.bn
    mean_before, var_before = bn.running_mean.clone(), bn.running_var.clone()
    regressors, scores = model(photos[:8])
    loss = regressors.square().mean() + torch.nn.functional.binary_cross_entropy_with_logits(
        scores.clamp(-100, 100), torch.zeros_like(scores)
    )
    loss.backward()
    assert not torch.allclose(bn.running_mean, mean_before)
    assert not torch.allclose(bn.running_var, var_before)
    assert bn.num_batches_tracked.item() == 1
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has non-finite gradients"
    assert any(p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize("name,size,anchors", [("blazeface_front", 128, 896), ("blazeface_back", 256, 896),
                                               ("blazeface_full", 192, 2304)])
def test_registered_variants_output_shapes(name, size, anchors):
    model = build_model(name).eval()
    with torch.inference_mode():
        regressors, scores = model(torch.zeros(2, 3, size, size))
    assert regressors.shape == (2, anchors, 16) and scores.shape == (2, anchors)
    with pytest.raises(ValueError, match=f"expects \\(B, 3, {size}, {size}\\)"):
        model(torch.zeros(2, 3, size + 32, size + 32))


def test_import_rejects_other_architectures():
    pytest.importorskip("tflite")
    with pytest.raises(MediaPipeImportError, match=SHORT_RANGE.name):
        load_mediapipe_weights(BlazeFace("back"), _require(SHORT_RANGE))
    with pytest.raises(MediaPipeImportError, match=FULL_RANGE.name):
        load_mediapipe_weights(BlazeFace("front"), _require(FULL_RANGE))
    with pytest.raises(MediaPipeImportError, match="input shape"):
        load_mediapipe_weights(BlazeFaceFullRange(), SHORT_RANGE)
    # Same input size, different head: caught by the per-conv shape check.
    with pytest.raises(MediaPipeImportError, match="head.reg_s8"):
        load_mediapipe_weights(BlazeFace("front", num_keypoints=5), SHORT_RANGE)


def test_convert_cli_writes_loadable_state_dict(imported, tmp_path):
    out = tmp_path / "blazeface_front.pth"
    main(["--tflite", str(SHORT_RANGE), "--out", str(out)])
    model = BlazeFace("front")
    model.load_state_dict(torch.load(out, weights_only=True))
    for key, value in imported.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_convert_cli_writes_the_full_range_model(full_range, tmp_path):
    out = tmp_path / "blazeface_full.pth"
    main(["--tflite", str(FULL_RANGE), "--out", str(out), "--variant", "full"])
    model = BlazeFaceFullRange()
    model.load_state_dict(torch.load(out, weights_only=True))
    for key, value in full_range.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
