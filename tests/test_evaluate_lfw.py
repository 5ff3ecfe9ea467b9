"""The embedding step (central face, fallback, jitter, cache) and ``evaluate.py --benchmark lfw|pairs``."""
from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest
import torch
import torch.nn as nn

import evaluate
from common.detections import Detections
from common.registry import register_embedder
from pipeline import build_embedder, list_embedders
from embedding.align import scaled_template
from embedding.embedder import Alignment, Embedder
from pipeline import verification as benchmark
from pipeline.embed_images import embed_images, fallback_box, jitter_chips
from matching.protocol import read_lfw_pairs
from tests.conftest import shared_path

TEST_EMBEDDER = "test_random_conv"
CHIP = 32


def _random_conv_embedder(weights=None, device="cpu") -> Embedder:
    """A fixed random conv net (seed 0): deterministic, fast, and sensitive to the chip's content."""
    generator = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 5, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                          nn.Linear(8 * 4 * 4, 16))  # (B, 3, 32, 32) -> (B, 16)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    alignment = Alignment(size=CHIP, template=tuple(map(tuple, scaled_template(CHIP).tolist())), margin=4)
    return Embedder(TEST_EMBEDDER, model, alignment, mean=(127.5,) * 3, std=(128.0,) * 3, weights_hash="seed0",
                    device=device)


if TEST_EMBEDDER not in list_embedders():
    register_embedder(TEST_EMBEDDER)(_random_conv_embedder)


class CountingEmbedder:
    """Wraps an Embedder and counts the chips it embeds."""

    def __init__(self, embedder):
        self.inner = embedder
        self.name, self.alignment, self.cache_key = embedder.name, embedder.alignment, embedder.cache_key
        self.chips = 0

    def embed_chips(self, chips):
        self.chips += len(chips)
        return self.inner.embed_chips(chips)


class FixedDetector:
    """One face at fixed landmarks in every image except those whose first pixel is black (no face)."""

    def __init__(self):
        self.calls = 0

    def detect(self, images):
        self.calls += 1
        found = []
        for image in images:
            if image[0, 0].sum() == 0:
                found.append(Detections.empty())
                continue
            landmarks = torch.tensor(scaled_template(CHIP).astype(np.float32))[None] * 2 + 10  # (1, 5, 2)
            found.append(Detections(torch.tensor([[10.0, 10.0, 74.0, 74.0]]), torch.tensor([0.99]), landmarks))
        return found


def _write_images(folder, count):
    import cv2
    rng = np.random.default_rng(0)
    paths = []
    for index in range(count):
        image = rng.integers(1, 255, (96, 96, 3), dtype=np.uint8)
        if index == count - 1:
            image[0, 0] = 0  # FixedDetector finds no face here
        path = folder / f"img{index}.png"
        cv2.imwrite(str(path), image)
        paths.append(path)
    return paths


def test_central_face_and_fallback_box():
    boxes = torch.tensor([[0.0, 0.0, 40.0, 40.0], [100.0, 90.0, 150.0, 160.0], [200.0, 200.0, 250.0, 250.0]])
    detections = Detections(boxes, torch.ones(3), torch.zeros(3, 5, 2))
    assert detections.nearest_to_centre(250, 250) == 1
    assert Detections.empty().nearest_to_centre(250, 250) is None
    np.testing.assert_allclose(fallback_box(250, 250), [[80.0, 65.0, 172.5, 187.5]])


def test_jitter_is_small_random_and_reproducible():
    chip = np.random.default_rng(1).integers(0, 255, (1, 64, 64, 3), dtype=np.uint8)
    first = jitter_chips(chip, 6, np.random.default_rng(5))
    again = jitter_chips(chip, 6, np.random.default_rng(5))
    assert first.shape == (6, 64, 64, 3)
    np.testing.assert_array_equal(first, again)
    assert len({copy.tobytes() for copy in first}) == 6  # all different
    # Small perturbations: each copy is closer to the chip or its mirror than a random image is.
    reference = np.stack([chip[0], chip[0][:, ::-1]]).astype(float)
    for copy in first.astype(float):
        nearest = min(np.abs(copy - mirror).mean() for mirror in reference)
        assert nearest < np.abs(copy - reference[0][::-1]).mean()


def test_embed_images_caches_and_counts_no_face(tmp_path):
    paths = _write_images(tmp_path, 5)
    embedder, detector = CountingEmbedder(_random_conv_embedder()), FixedDetector()
    first = embed_images(paths + paths[:2], embedder, detector, "fixed", cache_dir=tmp_path / "cache", chunk=2,
                         progress=False)
    assert first.embeddings.shape == (7, 16) and first.computed == 5 and embedder.chips == 5
    assert first.no_face.tolist() == [False, False, False, False, True, False, False]
    np.testing.assert_allclose(np.linalg.norm(first.embeddings, axis=1), 1, atol=1e-5)
    np.testing.assert_array_equal(first.embeddings[5], first.embeddings[0])

    again_embedder, again_detector = CountingEmbedder(_random_conv_embedder()), FixedDetector()
    second = embed_images(paths, again_embedder, again_detector, "fixed", cache_dir=tmp_path / "cache",
                          progress=False)
    assert second.computed == 0 and again_embedder.chips == 0 and again_detector.calls == 0
    np.testing.assert_array_equal(second.embeddings, first.embeddings[:5])

    # Another jitter setting is another cache entry; jittered embeddings differ from plain ones but stay close.
    jittered = embed_images(paths[:2], again_embedder, again_detector, "fixed", jitter=4,
                            cache_dir=tmp_path / "cache", progress=False)
    assert jittered.computed == 2 and again_embedder.chips == 8
    assert again_detector.calls == 0  # the faces found in the first run are cached per detector
    cosine = (jittered.embeddings * first.embeddings[:2]).sum(1)
    assert (cosine < 1 - 1e-4).all() and (cosine > 0.5).all()

    # A changed file is recomputed.
    shutil.copy(paths[1], paths[0])
    third = embed_images(paths, again_embedder, again_detector, "fixed", cache_dir=tmp_path / "cache",
                         progress=False)
    assert third.computed == 1 and again_detector.calls == 1
    np.testing.assert_allclose(third.embeddings[0], first.embeddings[1], atol=1e-6)


def test_refuses_a_fold_the_embedder_was_trained_on():
    root = shared_path("data", "lfw")
    pairs = read_lfw_pairs(root / "pairs.txt", root / "deepfunneled")
    fold3 = {pair.identity_x for pair in pairs if pair.fold == 2}
    trained = sorted(fold3)[:5] + ["Somebody_Not_In_LFW"]
    with pytest.raises(benchmark.TrainedOnTestFold, match=r"fold 3: 5 .*--folds.*\[1, 2, 4, 5, 6, 7, 8, 9, 10\]"):
        benchmark.check_unseen_identities("model.pt", pairs, range(10), reader=lambda path: trained)
    benchmark.check_unseen_identities("model.pt", pairs, [0, 1, 3], reader=lambda path: trained)  # no clash
    benchmark.check_unseen_identities("model.pt", pairs, range(10), reader=lambda path: None)  # not ours


def test_evaluate_cli_refuses_before_embedding(tmp_path, monkeypatch, capsys):
    root = shared_path("data", "lfw")
    fold1 = sorted({pair.identity_x for pair in read_lfw_pairs(root / "pairs.txt", root) if pair.fold == 0})
    monkeypatch.setattr(benchmark, "checkpoint_identities", lambda path: fold1[:2])
    weights = tmp_path / "model.pt"
    weights.write_bytes(b"")
    code = evaluate.run_cli(evaluate.main, ["--benchmark", "lfw", "--embedder", TEST_EMBEDDER, "--weights",
                                            str(weights), "--lfw-root", str(root), "--cache-dir", str(tmp_path)])
    assert code == 2
    assert "trained on identities of the test fold(s) — fold 1: 2" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.npz"))


def test_evaluate_lfw_end_to_end_with_limit_and_cache(tmp_path, capsys):
    root = shared_path("data", "lfw")
    argv = ["--benchmark", "lfw", "--embedder", TEST_EMBEDDER, "--lfw-root", str(root), "--limit", "2",
            "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "lfw.json")]
    assert evaluate.main(argv) == 0
    report = json.loads((tmp_path / "lfw.json").read_text())
    assert report["n_pairs"] == 20 and report["images_embedded_now"] == report["n_images"] > 0
    assert len(report["folds"]) == 10 and all(fold["n_pairs"] == 2 for fold in report["folds"])
    assert 0 <= report["accuracy_mean"] <= 1 and 0 <= report["auc"] <= 1
    assert (tmp_path / "lfw.roc.png").stat().st_size > 0
    assert "fold" in capsys.readouterr().out

    # Rerun: everything comes from the cache; the classifier verifier on the same embeddings, two test folds.
    assert evaluate.main(argv + ["--verifier", "classifier", "--folds", "2", "5"]) == 0
    report = json.loads((tmp_path / "lfw.json").read_text())
    assert report["images_embedded_now"] == 0 and report["test_folds"] == [2, 5]
    assert report["verifier"]["verifier"] == "classifier" and [f["fold"] for f in report["folds"]] == [2, 5]


def test_evaluate_pairs_csv(tmp_path):
    lfw = shared_path("data", "lfw", "deepfunneled")
    pairs = read_lfw_pairs(shared_path("data", "lfw", "pairs.txt"), lfw)
    chosen = pairs[:10] + pairs[300:310]
    lines = ["file_x,file_y,same"] + [f"{p.path_x.relative_to(lfw)},{p.path_y.relative_to(lfw)},"
                                      f"{'Yes' if p.same else 'No'}" for p in chosen]
    (tmp_path / "mine.csv").write_text("\n".join(lines) + "\n")
    assert evaluate.main(["--benchmark", "pairs", "--pairs", str(tmp_path / "mine.csv"), "--images", str(lfw),
                          "--embedder", TEST_EMBEDDER, "--cache-dir", str(tmp_path / "cache"),
                          "--out", str(tmp_path / "mine.json")]) == 0
    report = json.loads((tmp_path / "mine.json").read_text())
    assert report["n_pairs"] == 20 and len(report["folds"]) == 10
    assert sum(fold["n_pairs"] for fold in report["folds"]) == 20


def test_evaluate_detection_still_needs_data():
    with pytest.raises(SystemExit):
        evaluate.parse_args(["--benchmark", "detection"])
    assert evaluate.parse_args(["--benchmark", "detection", "--data", "x.xml"]).detector == "blazeface"
    assert evaluate.parse_args(["--benchmark", "lfw"]).detector == "mtcnn"
    with pytest.raises(SystemExit):
        evaluate.parse_args(["--benchmark", "lfw", "--data", "x.xml"])


def test_align_flag_is_dlib_resnets(capsys):
    with pytest.raises(SystemExit):
        evaluate.parse_args(["--benchmark", "lfw", "--embedder", "facenet", "--align", "template"])
    assert "--align applies to --embedder dlib_resnet only" in capsys.readouterr().err
    assert evaluate.parse_args(["--benchmark", "lfw", "--align", "template"]).align == "template"


@pytest.mark.slow
def test_dlib_embedder_on_lfw_with_limit(tmp_path):
    root = shared_path("data", "lfw")
    if "dlib_resnet" not in list_embedders():
        pytest.skip("the dlib_resnet embedder is not registered")
    try:
        build_embedder("dlib_resnet")
    except (FileNotFoundError, OSError, RuntimeError) as error:
        pytest.skip(f"dlib_resnet weights unavailable: {error}")
    assert evaluate.main(["--benchmark", "lfw", "--embedder", "dlib_resnet", "--lfw-root", str(root), "--limit",
                          "10", "--cache-dir", str(tmp_path), "--out", str(tmp_path / "dlib.json")]) == 0
    report = json.loads((tmp_path / "dlib.json").read_text())
    assert report["n_pairs"] == 100
    assert report["accuracy_mean"] >= 0.95  # dlib's model is ~99 % on the full protocol
    assert "-dlib5-" in report["embedder_key"]  # chips from dlib's landmarker by default
    assert evaluate.main(["--benchmark", "lfw", "--embedder", "dlib_resnet", "--lfw-root", str(root), "--limit",
                          "10", "--align", "template", "--cache-dir", str(tmp_path),
                          "--out", str(tmp_path / "template.json")]) == 0
    template = json.loads((tmp_path / "template.json").read_text())
    assert "-dlib5-" not in template["embedder_key"] and template["accuracy_mean"] >= 0.95


def test_train_matching_stage_fits_and_saves_a_classifier(tmp_path):
    import train
    from matching.verifier import ClassifierVerifier, load_verifier
    lfw = shared_path("data", "lfw", "deepfunneled")
    pairs = read_lfw_pairs(shared_path("data", "lfw", "pairs.txt"), lfw)
    chosen = pairs[:12] + pairs[300:312]
    lines = ["file_x,file_y,same"] + [f"{p.path_x.relative_to(lfw)},{p.path_y.relative_to(lfw)},{int(p.same)}"
                                      for p in chosen]
    (tmp_path / "train.csv").write_text("\n".join(lines) + "\n")
    output = tmp_path / "out" / "verifier.joblib"
    assert train.main(["--stage", "matching", "--config", "configs/matching.yaml", "--set",
                       f"embedder.name={TEST_EMBEDDER}", "--set", f"data.pairs={tmp_path / 'train.csv'}",
                       "--set", f"data.images={lfw}", "--set", "data.test_pairs=null", "--set",
                       f"data.cache_dir={tmp_path / 'cache'}", "--set", f"output.path={output}"]) == 0
    verifier = load_verifier(output)
    assert isinstance(verifier, ClassifierVerifier) and verifier.fitted
    figures = json.loads((tmp_path / "out" / "verifier.metrics.json").read_text())
    assert figures["train_pairs"] == 24 and 0.5 <= figures["train_accuracy"] <= 1
    assert (tmp_path / "out" / "verifier.config.yaml").is_file()
    assert train.run_cli(train.main, ["--stage", "matching", "--epochs", "3"]) == 2


def test_shrunk_photo_keeps_the_size_and_only_face_px_of_detail():
    image = np.zeros((250, 250, 3), np.uint8)
    image[::2] = 255  # stripes 1 px high: detail that a face shrunk from 100 to 24 px cannot keep
    shrunk = cv2.imdecode(np.frombuffer(benchmark.shrunk_photo(image, 100.0, 24), np.uint8), cv2.IMREAD_COLOR)
    assert shrunk.shape == image.shape
    assert np.abs(np.diff(shrunk[100:150, 100, 0].astype(int))).max() < 40  # the stripes are gone: flat grey
    kept = cv2.imdecode(np.frombuffer(benchmark.shrunk_photo(image, 20.0, 24), np.uint8), cv2.IMREAD_COLOR)
    assert np.abs(np.diff(kept[100:150, 100, 0].astype(int))).max() > 200  # a face already that small: JPEG only


def test_evaluate_lfw_with_small_probe_faces(tmp_path):
    root = shared_path("data", "lfw")
    argv = ["--benchmark", "lfw", "--embedder", TEST_EMBEDDER, "--lfw-root", str(root), "--limit", "2",
            "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "lfw.json")]
    assert evaluate.main(argv + ["--probe-face-px", "16"]) == 0
    report = json.loads((tmp_path / "lfw.json").read_text())
    [folder] = (tmp_path / "cache" / "probes").iterdir()  # named by the detector's cache key and the face width
    assert folder.name.startswith("mtcnn@") and folder.name.endswith("-16px")
    probes = sorted(folder.rglob("*.jpg"))
    assert report["probe_face_px"] == 16 and "16 px wide" in report["probe"] and report["n_pairs"] == 20
    assert len(probes) == len({pair.path_y for pair in benchmark.limit_pairs(benchmark.lfw_pairs(root)[0], 2)})
    first = cv2.imread(str(probes[0]))
    assert first.shape == (250, 250, 3)
    assert evaluate.main(argv + ["--probe-face-px", "16"]) == 0  # the copies are reused, not written again
    assert [probe.stat().st_mtime_ns for probe in probes] == [
        probe.stat().st_mtime_ns for probe in sorted(folder.rglob("*.jpg"))]
    assert evaluate.run_cli(evaluate.main, argv + ["--probe-face-px", "2"]) == 2


def test_the_cross_resolution_table_and_curve_come_from_the_stored_reports(tmp_path, capsys):
    from bench import cross_resolution
    results = tmp_path / "cross_resolution"
    results.mkdir()
    for embedder, weights, folds, width, accuracy in (("sface", None, list(range(1, 11)), None, 0.995),
                                                      ("sface", None, list(range(1, 11)), 16, 0.93),
                                                      ("omz0095", "student.pth", [10], 16, 0.99)):
        report = {"embedder": embedder, "weights": weights, "test_folds": folds, "probe_face_px": width,
                  "accuracy_mean": accuracy, "accuracy_std": 0.004, "tar_at_far_1e-3": 0.9}
        (results / cross_resolution.report_name(embedder + (" student" if weights else ""), width)).write_text(
            json.dumps(report))
    assert cross_resolution.main(["--results", str(results)]) == 0
    table = capsys.readouterr().out
    assert "| sface | 99.50 ± 0.40 / 0.900 |  |  |  | 93.00 ± 0.40 / 0.900 |" in table
    assert "| omz0095 student, fold 10 |  |  |  |  | 99.00 / 0.900 |" in table
    assert (tmp_path / "cross_resolution.png").stat().st_size > 0
    with pytest.raises(SystemExit):
        cross_resolution.main(["--results", str(results), "--student", "x.pth"])  # names a run: needs --run


def test_the_readme_cross_resolution_table_is_the_one_the_stored_reports_give():
    from bench import cross_resolution
    from tests.conftest import ROOT
    table = cross_resolution.markdown(cross_resolution.load(cross_resolution.RESULTS))
    assert table in (ROOT / "README.md").read_text(), "rerun python -m bench.cross_resolution and paste its table"


def test_face_caches_are_keyed_on_the_detectors_config_files_and_code(tmp_path, monkeypatch):
    """A change to MTCNN's thresholds, to a file its config names, or to detector code gives another cache key, so
    cached landmarks and embeddings are recomputed rather than reused stale; the same detector keeps its key."""
    from pipeline import build

    key = build.detector_cache_key("mtcnn")
    assert key.startswith("mtcnn@") and build.detector_cache_key("mtcnn") == key
    assert build.detector_cache_key("mtcnn", set_items=["inference.min_face_px=30"]) != key
    weights = tmp_path / "mtcnn.pth"
    weights.write_bytes(b"one")
    with_file = build.detector_cache_key("mtcnn", set_items=[f"model.weights={weights}"])
    weights.write_bytes(b"two!")
    assert build.detector_cache_key("mtcnn", set_items=[f"model.weights={weights}"]) != with_file
    monkeypatch.setattr(build, "detector_code_digest", lambda: "other code")
    assert build.detector_cache_key("mtcnn") != key
    fused = build.detector_cache_key("fusion")
    assert build.detector_cache_key("fusion", set_items=["detection.fusion.iou=0.5"]) != fused
