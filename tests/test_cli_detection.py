"""evaluate.py and infer.py on real photos with the imported MediaPipe weights."""
from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest

from tests.conftest import ROOT, shared_path


def run(*args):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def weights():
    pytest.importorskip("tflite")
    return shared_path("models", "mediapipe", "face_detection_short_range.tflite")


@pytest.mark.slow
def test_evaluate_dlib_testing_ap(tmp_path, weights):
    xml = shared_path("data", "detection", "dlib_faces", "testing.xml")
    out = tmp_path / "results.json"
    result = run("evaluate.py", "--benchmark", "detection", "--detector", "blazeface", "--weights", str(weights),
                 "--data", str(xml), "--out", str(out))
    assert result.returncode == 0, result.stderr
    figures = json.loads(out.read_text())
    assert figures["faces"] == 25 and figures["images"] == 5
    assert figures["ap50"] >= 0.95  # planned tiles find the 9-px faces the 128-px whole-photo pass misses
    assert (tmp_path / "results.pr.png").stat().st_size > 10_000
    whole = run("evaluate.py", "--benchmark", "detection", "--weights", str(weights), "--data", str(xml),
                "--min-face-px", "none", "--out", str(tmp_path / "whole.json"))
    assert json.loads((tmp_path / "whole.json").read_text())["ap50"] < 0.5, whole.stdout
    # the full-range model (192 px, faces down to 12 px of it) finds them on the whole photo
    full = run("evaluate.py", "--benchmark", "detection", "--set", "model.variant=full", "--data", str(xml),
               "--min-face-px", "none", "--out", str(tmp_path / "full.json"))
    assert json.loads((tmp_path / "full.json").read_text())["ap50"] >= 0.99, full.stdout + full.stderr


def test_infer_takes_the_full_range_model_by_set(tmp_path):
    pytest.importorskip("tflite")
    photo = shared_path("data", "faces_in_photos", "compreface", "010_2.jpg")
    out = tmp_path / "dets.json"
    result = run("infer.py", "--detector", "blazeface", "--set", "model.variant=full", "--input", str(photo),
                 "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert [len(faces) for faces in json.loads(out.read_text()).values()] == [2]


@pytest.mark.slow
def test_evaluate_compreface_nose_points(tmp_path, weights):
    annotations = shared_path("data", "faces_in_photos", "compreface", "annotations.json")
    out = tmp_path / "cf.json"
    result = run("evaluate.py", "--benchmark", "detection", "--weights", str(weights), "--data", str(annotations),
                 "--out", str(out))
    assert result.returncode == 0, result.stderr
    figures = json.loads(out.read_text())
    assert figures["faces"] == 46 and figures["matching"] == "nose point inside box"
    assert figures["ap50"] >= 0.95


@pytest.mark.slow
def test_infer_image_folder_and_video(tmp_path, weights):
    photos = shared_path("data", "faces_in_photos", "compreface")
    out = tmp_path / "dets.json"
    result = run("infer.py", "--detector", "blazeface", "--weights", str(weights), "--input", str(photos),
                 "--out", str(out), "--save-vis", str(tmp_path / "vis"))
    assert result.returncode == 0, result.stderr
    detections = json.loads(out.read_text())
    assert len(detections) == 18
    five = detections[str(photos / "000_5.jpg")]
    assert len(five) == 5
    face = five[0]
    assert len(face["box"]) == 4 and len(face["landmarks"]) == 5 and 0.5 <= face["score"] <= 1
    assert len(list((tmp_path / "vis").glob("*.jpg"))) == 18

    # A short video made of one photo: every frame gets a key "<video>#<frame>".
    frame = cv2.imread(str(photos / "010_2.jpg"))
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5, (frame.shape[1], frame.shape[0]))
    for _ in range(3):
        writer.write(frame)
    writer.release()
    result = run("infer.py", "--weights", str(weights), "--input", str(video), "--out", str(tmp_path / "v.json"))
    assert result.returncode == 0, result.stderr
    frames = json.loads((tmp_path / "v.json").read_text())
    assert sorted(frames) == [f"{video}#{i}" for i in range(3)]
    assert all(len(faces) == 2 for faces in frames.values())


def test_infer_bad_inputs_are_clear_errors(tmp_path, weights):
    missing = run("infer.py", "--weights", str(weights), "--input", str(tmp_path / "nope.jpg"), "--out", "x.json")
    assert missing.returncode == 2 and "input not found" in missing.stderr and "Traceback" not in missing.stderr
    fake = tmp_path / "fake.jpg"
    fake.write_text("not an image")
    bad = run("infer.py", "--weights", str(weights), "--input", str(fake), "--out", str(tmp_path / "o.json"))
    assert bad.returncode == 2 and "fake.jpg" in bad.stderr and "Traceback" not in bad.stderr
    no_weights = run("infer.py", "--weights", str(tmp_path / "w.tflite"), "--input", str(fake), "--out", "x.json")
    assert no_weights.returncode == 2 and "weights not found" in no_weights.stderr


def test_detections_landmarks_lie_near_faces(weights):
    from common.io import read_image
    from detection.blazeface.detector import blazeface_detector

    detector = blazeface_detector(weights=str(weights), score_threshold=0.75, min_face_px=20)
    image = read_image(shared_path("data", "faces_in_photos", "compreface", "010_2.jpg"))
    detections = detector.detect([image])[0]
    assert len(detections) == 2
    for box, points in zip(detections.boxes.numpy(), detections.landmarks.numpy()):
        assert np.all(points[:, 0] > box[0]) and np.all(points[:, 0] < box[2])
        assert np.all(points[:, 1] > box[1]) and np.all(points[:, 1] < box[3])
        assert points[0, 0] < points[1, 0]  # image-left eye first
        assert points[0, 1] < points[2, 1] < points[3, 1]  # eyes above the nose above the mouth
