"""BlazeFace training end to end on real photos: overfit, resume, fine-tune, CLI errors, DDP."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from common.config import build_config
from detection.blazeface.config import BLAZEFACE_DEFAULTS
from detection.blazeface.training import run_blazeface_training
from tests.blazeface_data import write_face_crops
from tests.conftest import ROOT, shared_path

TFLITE = ("models", "mediapipe", "face_detection_short_range.tflite")


def config(tmp_path, **overrides):
    base = {"train.device": "cpu", "train.num_workers": 0, "train.amp": False, "train.checkpoint_every": 0,
            "output.checkpoint_dir": str(tmp_path / "ckpt"), "output.log_dir": str(tmp_path / "logs"),
            "model.pretrained": False}
    base.update(overrides)
    return build_config(BLAZEFACE_DEFAULTS, None, base)


@pytest.fixture(scope="module")
def crops_csv(tmp_path_factory):
    xml = shared_path("data", "detection", "dlib_faces", "training_with_face_landmarks.xml")
    return write_face_crops(xml, tmp_path_factory.mktemp("crops"), limit=8)


@pytest.mark.slow
@pytest.mark.parametrize("variant, epochs", [("front", 120), ("full", 120)])
def test_overfit_a_few_real_photos(tmp_path, crops_csv, variant, epochs):
    """From scratch, each network learns the crops it sees: the loss falls and AP rises. "full" is the full-range
    network (192 px, one 48×48 level of 2,304 anchors)."""
    cfg = config(tmp_path, **{"model.variant": variant, "data.train": str(crops_csv), "data.val": str(crops_csv),
                              "data.augment": False, "train.epochs": epochs, "train.batch_size": 8,
                              "train.lr": 3e-3, "train.weight_decay": 0.0})
    history = run_blazeface_training(cfg)
    first, last = history[0], history[-1]
    assert last["train/loss"] < 0.2 * first["train/loss"]
    assert first["val/ap50"] < 0.5
    assert last["val/ap50"] >= 0.9, last
    assert (tmp_path / "ckpt" / "BlazeFace_best.pth").is_file()
    assert (tmp_path / "ckpt" / "BlazeFace_final.pth").is_file()
    assert (tmp_path / "ckpt" / "config.yaml").is_file()
    assert list((tmp_path / "logs" / "BlazeFace").glob("events.out.tfevents.*"))


def test_resume_continues_the_same_loss_curve(tmp_path, crops_csv):
    common = {"data.train": str(crops_csv), "data.val": None, "data.val_fraction": 0.25, "train.batch_size": 3,
              "train.lr": 1e-3}
    full = run_blazeface_training(config(tmp_path / "full", **common, **{"train.epochs": 3,
                                                                          "train.checkpoint_every": 1}))
    # A run stopped after epoch 1 left this checkpoint; a new run resumes from it.
    after_epoch_1 = tmp_path / "full" / "ckpt" / "BlazeFace_epoch1.pth"
    resumed = run_blazeface_training(config(tmp_path / "resumed", **common, **{"train.epochs": 3,
                                                                               "output.resume": str(after_epoch_1)}))
    assert [r["epoch"] for r in resumed] == [2, 3]
    for uninterrupted, continued in zip(full[1:], resumed):
        assert continued["train/loss"] == pytest.approx(uninterrupted["train/loss"], rel=1e-5)
        assert continued["val/loss"] == pytest.approx(uninterrupted["val/loss"], rel=1e-5)


@pytest.mark.slow
def test_fine_tuning_imported_weights_keeps_ap(tmp_path, crops_csv):
    """Five epochs from MediaPipe's weights on 8 training crops, the best epoch chosen on those crops: AP@0.5 on 25
    crops of dlib's testing photos, which neither training nor the choice of epoch saw, stays within 0.1 of the
    imported weights'."""
    from common.checkpoint import load_state_file
    from common.registry import build_model
    from detection.blazeface.detector import load_weights

    weights = shared_path(*TFLITE)
    pytest.importorskip("tflite")
    test_xml = shared_path("data", "detection", "dlib_faces", "testing_with_face_landmarks.xml")
    test_crops = write_face_crops(test_xml, tmp_path / "test_crops", limit=25)
    cfg = config(tmp_path, **{"data.train": str(crops_csv), "data.val": str(crops_csv), "model.pretrained": True,
                              "model.weights": str(weights), "train.epochs": 5, "train.batch_size": 8,
                              "train.lr": 1e-4})
    test_cfg = config(tmp_path, **{"data.train": str(crops_csv), "data.val": str(test_crops)})
    before = crops_ap(test_cfg, load_weights(build_model("blazeface_front"), weights))
    assert before > 0.5  # the imported model already finds these faces
    run_blazeface_training(cfg)
    after = crops_ap(test_cfg, load_state_file(build_model("blazeface_front"), tmp_path / "ckpt" / "BlazeFace_best.pth",
                                              "a BlazeFace"))
    print(f"AP@0.5 on 25 test crops: imported {before:.3f}, fine-tuned {after:.3f}")
    assert after >= before - 0.1 and after >= 0.5, (before, after)


def crops_ap(cfg, model) -> float:
    """AP@0.5 of ``model`` on the validation crops of ``cfg``."""
    from torch.utils.data import DataLoader

    from detection.data.dataset import collate_detection
    from detection.blazeface.training import BlazeFaceTask, load_datasets

    _, val_set = load_datasets(cfg, 128)
    loader = DataLoader(val_set, batch_size=8, collate_fn=collate_detection)
    with torch.no_grad():
        return BlazeFaceTask(cfg, torch.device("cpu")).evaluate(model.eval(), loader)["ap50"]


def run_cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def test_bad_csv_row_is_a_clear_error(tmp_path):
    csv_path = tmp_path / "bad.csv"
    csv_path.write_text("image_path,x1,y1,w,h,width,height\na.jpg,10,10,20,20,100,100\na.jpg,10,10,-5,20,100,100\n")
    result = run_cli("train.py", "--stage", "detection", "--csv-format", "--train-data", str(csv_path),
                     "--device", "cpu", "--checkpoint-dir", str(tmp_path / "c"), "--log-dir", str(tmp_path / "l"))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "bad.csv:3" in result.stderr


def test_unknown_config_key_is_a_clear_error(tmp_path):
    result = run_cli("train.py", "--stage", "detection", "--set", "train.learning_rate=0.1")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "unknown key 'train.learning_rate'" in result.stderr and "lr" in result.stderr


@pytest.mark.slow
def test_ddp_two_cpu_processes(tmp_path, crops_csv):
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
         "train.py", "--stage", "detection", "--csv-format", "--train-data", str(crops_csv), "--device", "cpu",
         "--epochs", "2", "--batch-size", "2", "--num-workers", "0", "--no-auto-resume",
         "--checkpoint-dir", str(tmp_path / "c"), "--log-dir", str(tmp_path / "l"), "--set", "train.amp=false",
         "--set", "model.pretrained=false"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "c" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]  # written once, by rank 0
    state = torch.load(tmp_path / "c" / "BlazeFace_final.pth", weights_only=False)
    assert not any(key.startswith("module.") for key in state["model"])


@pytest.mark.slow
def test_train_cli_with_the_shipped_config(tmp_path):
    shared_path(*TFLITE)
    pytest.importorskip("tflite")
    result = run_cli("train.py", "--stage", "detection", "--config", "configs/detection_blazeface.yaml",
                     "--epochs", "2", "--num-workers", "0", "--device", "cpu",
                     "--checkpoint-dir", str(tmp_path / "c"), "--log-dir", str(tmp_path / "l"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "val/ap50=" in result.stdout
    saved = (tmp_path / "c" / "config.yaml").read_text()
    assert "epochs: 2" in saved and "pretrained: true" in saved
    assert {p.name for p in (tmp_path / "c").glob("*.pth")} >= {"BlazeFace_best.pth", "BlazeFace_final.pth",
                                                              "BlazeFace_last.pth"}
    again = run_cli("train.py", "--stage", "detection", "--config", "configs/detection_blazeface.yaml",
                    "--epochs", "3", "--num-workers", "0", "--device", "cpu",
                    "--checkpoint-dir", str(tmp_path / "c"), "--log-dir", str(tmp_path / "l"))
    assert again.returncode == 0 and "epoch 2 done" in again.stdout + again.stderr
    assert "epoch 3/3" in again.stdout
