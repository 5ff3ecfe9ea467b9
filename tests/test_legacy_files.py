"""Files written by the code before the architecture move (commit b95713e: ``matching/attendance_service``,
``common/pipeline``, ``common/export``) keep loading: an attendance database, a training checkpoint, pickled and
JSON verifiers, and an ONNX cache. ``tests/data/legacy`` holds one of each, made with that commit:

    attendance.py enroll --class 7B --roster <Colin_Powell, George_W_Bush, Tony_Blair: LFW photos 1-2>
    attendance.py mark --class 7B --photo Colin_Powell_0003.jpg --date 2026-11-30
    train.py --stage detection --config configs/detection_mtcnn.yaml --mtcnn-stage pnet --epochs 1 (small sampling)
    build_verifier("classifier" | "threshold").fit(...).save(...) on verifier_pairs.npz
    python -m common.export --model mtcnn (pnet-*.onnx kept)
"""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

import train
from classroom.database import AttendanceDB
from classroom.service import AttendanceService, attendance_config
from common.checkpoint import load_checkpoint
from common.export import OnnxRunner, cached_export
from detection.mtcnn.model import load_pretrained_mtcnn
from matching.verifier import load_verifier
from tests.conftest import ROOT, shared_path

LEGACY = ROOT / "tests" / "data" / "legacy"


def test_attendance_database_keeps_its_classes_and_sessions_and_marks_again(tmp_path):
    database = shutil.copy(LEGACY / "attendance.sqlite", tmp_path / "attendance.sqlite")
    with AttendanceDB(database) as db:
        assert db.class_names() == ["7B"]
        assert sorted(db.gallery("7B").names) == ["Colin_Powell", "George_W_Bush", "Tony_Blair"]
        assert [mark["student"] for mark in db.session_marks("7B") if mark["present"]] == ["Colin_Powell"]
    photo = shared_path("data", "lfw", "deepfunneled", "Colin_Powell", "Colin_Powell_0003.jpg")
    # enrolled with dlib_resnet, the default embedder then, and marked with the matching settings of then: marked
    # with them again (the fusion that is the default now cannot compare its embeddings with dlib_resnet's)
    cfg = attendance_config(ROOT / "configs" / "attendance.yaml", [
        "mark_set=[embedding.embedder=dlib_resnet]", "matching.target_far=0.0005", "matching.floor=0.9",
        "matching.min_margin=0.004"])
    service = AttendanceService(cfg, db_path=database)
    try:
        result = service.mark("7B", [photo], "again", "2026-12-01", tmp_path / "out")
    finally:
        service.close()
    assert result["present"] == ["Colin_Powell"]
    with AttendanceDB(database) as db:
        sessions = {session["session"]: session for session in db.sessions("7B")}
    legacy, again = sessions["2026-11-30"], sessions["again"]
    assert again["threshold"] == pytest.approx(legacy["threshold"], abs=1e-9)  # the same gallery, the same threshold


def test_training_checkpoint_resumes(tmp_path):
    checkpoint = torch.load(LEGACY / "MTCNN_pnet_best.pth", map_location="cpu", weights_only=False)
    assert checkpoint["epoch"] == 1 and load_checkpoint(LEGACY / "MTCNN_pnet_best.pth")["model"]
    run = tmp_path / "ckpt"
    run.mkdir()
    shutil.copy(LEGACY / "MTCNN_pnet_best.pth", run / "MTCNN_pnet_best.pth")
    argv = ["--stage", "detection", "--config", str(ROOT / "configs" / "detection_mtcnn.yaml"), "--mtcnn-stage",
            "pnet", "--epochs", "2", "--checkpoint-dir", str(run), "--log-dir", str(tmp_path / "logs"),
            "--device", "cpu", "--num-workers", "0", "--resume", str(run / "MTCNN_pnet_best.pth"),
            "--set", "mtcnn.sampling.negatives_per_image=10", "--set", "mtcnn.sampling.shifted_per_face=4",
            "--set", "mtcnn.sampling.negatives_near_face=1"]
    assert train.main(argv) == 0
    assert torch.load(run / "MTCNN_pnet_last.pth", map_location="cpu", weights_only=False)["epoch"] == 2


@pytest.mark.parametrize("kind, file", [("classifier", "verifier_classifier.joblib"),
                                        ("threshold", "verifier_threshold.json")])
def test_saved_verifiers_load_and_predict_the_same(kind, file):
    pairs = np.load(LEGACY / "verifier_pairs.npz")
    verifier = load_verifier(LEGACY / file)
    assert verifier.describe()["verifier"] == kind
    expected = np.load(LEGACY / f"verifier_{kind}_predictions.npy")
    assert np.array_equal(verifier.predict(pairs["e1"], pairs["e2"]), expected)


def test_onnx_cache_is_found_not_exported_again(tmp_path):
    cached = LEGACY / "pnet-2df29870ee899984.onnx"
    shutil.copy(cached, tmp_path / cached.name)
    pnet = load_pretrained_mtcnn()[0]
    before = (tmp_path / cached.name).stat().st_mtime_ns
    path = cached_export(pnet, tmp_path)
    assert path == tmp_path / cached.name and path.stat().st_mtime_ns == before
    images = torch.rand(2, 3, 40, 52) * 2 - 1
    with torch.inference_mode():
        expected = pnet.eval()(images)
    for got, want in zip(OnnxRunner(path)(images), expected):
        assert torch.allclose(got, want, atol=1e-4)
