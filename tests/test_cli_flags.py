"""Every flag a command accepts is used or refused with a clear message: none is parsed and then ignored."""
from __future__ import annotations

import pytest
import yaml

import attendance
import evaluate
import train
from common.cli import EXIT_USAGE, run_cli
from common.config import ConfigError
from tests.conftest import ROOT


@pytest.mark.parametrize("argv, refused", [
    (["--benchmark", "lfw", "--score-threshold", "0.5"], "--score-threshold applies to --benchmark detection/wider"),
    (["--benchmark", "pairs", "--pairs", "p.csv", "--iou", "0.3"], "--iou applies to --benchmark detection/wider"),
    (["--benchmark", "lfw", "--min-face-px", "20"], "--min-face-px applies to --benchmark detection/wider"),
    (["--benchmark", "lfw", "--images", "photos"], "--images applies to --benchmark pairs/wider"),
    (["--benchmark", "detection", "--data", "x.xml", "--embedder", "facenet"], "--embedder applies to --benchmark lfw"),
    (["--benchmark", "detection", "--data", "x.xml", "--flip"], "--flip applies to --benchmark lfw/pairs only"),
    (["--benchmark", "detection", "--data", "x.xml", "--folds", "1"], "--folds applies to --benchmark lfw/pairs"),
    (["--benchmark", "wider", "--predictions", "p", "--verifier", "classifier"], "--verifier applies to"),
    (["--benchmark", "wider", "--predictions", "p", "--data", "x.xml"], "--data applies to --benchmark detection"),
    (["--benchmark", "wider", "--predictions", "p", "--detector", "mtcnn"], "--detector shape the detector"),
    (["--benchmark", "wider", "--predictions", "p", "--score-threshold", "0.1"], "apply to --benchmark wider only "
                                                                                  "with --images"),
    (["--benchmark", "wider", "--predictions", "p", "--device", "cpu"], "--device shape the detector"),
])
def test_evaluate_refuses_flags_its_benchmark_does_not_use(argv, refused, capsys):
    with pytest.raises(SystemExit) as stopped:
        evaluate.parse_args(argv)
    assert stopped.value.code == EXIT_USAGE and refused in capsys.readouterr().err


def test_evaluate_defaults_apply_when_the_flags_are_not_given():
    args = evaluate.parse_args(["--benchmark", "wider", "--predictions", "p", "--images", "imgs", "--iou", "0.4",
                                "--plot", "w.png"])
    assert (args.detector, args.iou, args.plot) == ("retinaface", 0.4, "w.png")
    assert evaluate.parse_args(["--benchmark", "lfw", "--detector", "fusion"]).detector == "fusion"


@pytest.mark.parametrize("stage, flag, refused", [
    ("embedding", ["--variant", "back"], "--variant do not apply to --stage embedding"),
    ("matching", ["--epochs", "3"], "--epochs do not apply to --stage matching"),
    ("all", ["--variant", "back"], "--variant do not apply to a pipeline config"),
    ("all", ["--train-data", "a.xml"], "--train-data do not apply to a pipeline config"),
    ("all", ["--detector", "mtcnn"], "--detector mtcnn does not apply to a pipeline config"),
])
def test_train_refuses_flags_its_stage_does_not_use(stage, flag, refused, capsys):
    config = {"embedding": "configs/embedding_mobilefacenet.yaml", "matching": "configs/matching.yaml",
              "all": "configs/pipeline.yaml"}[stage]
    assert run_cli(train.main, ["--stage", stage, "--config", str(ROOT / config), *flag]) == EXIT_USAGE
    assert refused in capsys.readouterr().err


def test_train_stage_all_passes_the_shared_training_flags_to_each_stage(tmp_path, monkeypatch):
    import pipeline.training as training

    seen = {}
    monkeypatch.setattr(training, "fit_fusion_calibration",
                        lambda cfg: seen.setdefault("calibration", cfg["calibration"]) and {})
    monkeypatch.setattr(training, "train_embedder", lambda cfg: seen.setdefault("embedding", cfg))
    monkeypatch.setattr(training, "run_matching_training", lambda cfg: seen.setdefault("matching", cfg))
    run = tmp_path / "run"
    assert train.main(["--stage", "all", "--config", str(ROOT / "configs" / "pipeline.yaml"),
                       "--set", "embedding.train_config=configs/embedding_mobilefacenet.yaml",
                       "--set", "matching.train_config=configs/matching.yaml",
                       "--epochs", "3", "--batch-size", "8", "--lr", "0.01", "--device", "cpu", "--num-workers", "0",
                       "--no-auto-resume", "--checkpoint-dir", str(run)]) == 0
    embedding = seen["embedding"]
    assert (embedding["train"]["epochs"], embedding["train"]["batch_size"], embedding["train"]["lr"]) == (3, 8, 0.01)
    assert embedding["train"]["device"] == "cpu" and embedding["train"]["num_workers"] == 0
    assert embedding["output"]["auto_resume"] is False
    assert embedding["output"]["checkpoint_dir"] == str(run / "embedding")  # --checkpoint-dir is the run folder
    assert seen["calibration"]["device"] == "cpu" and seen["matching"]["embedder"]["device"] == "cpu"
    saved = yaml.safe_load((run / "config.yaml").read_text())  # the effective config is saved with the run
    assert saved["train"]["epochs"] == 3 and saved["output"]["run_dir"] == str(run)


def test_train_stage_all_without_flags_leaves_each_stage_its_own_config(tmp_path, monkeypatch):
    import pipeline.training as training

    seen = {}
    monkeypatch.setattr(training, "fit_fusion_calibration", lambda cfg: seen.setdefault("calibration", cfg) and {})
    monkeypatch.setattr(training, "train_embedder", lambda cfg: seen.setdefault("embedding", cfg))
    assert train.main(["--stage", "all", "--config", str(ROOT / "configs" / "pipeline.yaml"),
                       "--set", "embedding.train_config=configs/embedding_mobilefacenet.yaml",
                       "--set", f"output.run_dir={tmp_path}"]) == 0
    shipped = yaml.safe_load((ROOT / "configs" / "embedding_mobilefacenet.yaml").read_text())
    assert seen["embedding"]["train"]["epochs"] == shipped["train"]["epochs"]
    assert seen["calibration"]["calibration"]["device"] == "cpu"


def test_attendance_demo_has_no_database_flag(capsys):
    with pytest.raises(SystemExit):
        attendance.parse_args(["demo", "--db", "x.sqlite"])
    assert "unrecognized arguments: --db" in capsys.readouterr().err


def test_detection_flag_of_another_detector_is_refused():
    from pipeline.flags import add_detection_flags, detection_overrides
    import argparse

    parser = argparse.ArgumentParser()
    add_detection_flags(parser)
    with pytest.raises(ConfigError, match="--mtcnn-stage applies to mtcnn only, not blazeface"):
        detection_overrides(parser.parse_args(["--mtcnn-stage", "pnet"]), "blazeface")


def test_train_detector_fusion_fits_the_calibration_of_the_pipeline_config(tmp_path, monkeypatch):
    import pipeline.training as training

    seen = {}
    monkeypatch.setattr(training, "fit_fusion_calibration", lambda cfg: seen.setdefault("cfg", cfg) and {})
    assert train.main(["--stage", "detection", "--detector", "fusion", "--device", "cpu",
                       "--set", f"output.run_dir={tmp_path}"]) == 0
    assert seen["cfg"]["calibration"]["device"] == "cpu" and (tmp_path / "manifest.json").is_file()


def test_infer_refuses_max_frames_for_images(tmp_path, capsys):
    import infer

    photo = ROOT.parent / "shared" / "data" / "detection" / "dlib_faces" / "2008_002470.jpg"
    if not photo.is_file():
        pytest.skip("../shared is absent")
    code = run_cli(infer.main, ["--detector", "mtcnn", "--input", str(photo), "--out", str(tmp_path / "d.json"),
                                "--max-frames", "5"])
    assert code == EXIT_USAGE and "--max-frames applies to a video file or a webcam" in capsys.readouterr().err


def test_attendance_report_has_no_verbose_flag(capsys):
    with pytest.raises(SystemExit):
        attendance.parse_args(["report", "--class", "7B", "--verbose"])
    assert "unrecognized arguments: --verbose" in capsys.readouterr().err
    assert attendance.parse_args(["mark", "--class", "7B", "--photo", "a.jpg", "--verbose"]).verbose
