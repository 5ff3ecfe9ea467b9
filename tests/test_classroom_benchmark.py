"""``evaluate.py --benchmark classroom``: the generated class photo puts each face where its box says, rows
narrow and rise towards the back, and every outcome is counted as the report says."""
from __future__ import annotations

import importlib.util
import json

import cv2
import numpy as np
import pytest
import torch
from PIL import ImageFile

import evaluate
from classroom.benchmark import (NOMINAL_FACE, Seat, compose, enroll_roster, face_owners, photo_outcome, seat_layout,
                                 size_bin, size_figures)
from classroom.service import attendance_config, default_attendance_config
from common.boxes import box_iou
from tests.conftest import shared_path

SETTINGS = attendance_config(default_attendance_config())["benchmark"]


def test_rows_narrow_and_rise_towards_the_back_and_faces_do_not_overlap():
    width, height = SETTINGS["photo_sizes"][0]
    seats = np.array(seat_layout(SETTINGS["row_face_px"], 8, width, height, np.random.default_rng(0)))
    rows = seats.reshape(len(SETTINGS["row_face_px"]), 8, 3)  # (rows, seats, (x, y, face width))
    assert (np.diff(rows[:, :, 1].mean(1)) > 0).all() and (np.diff(rows[:, :, 2].mean(1)) > 0).all()
    spans = rows[:, :, 0].max(1) - rows[:, :, 0].min(1)
    assert (np.diff(spans) > 0).all() and rows[..., 0].min() > 0 and rows[..., 0].max() < width
    boxes = np.concatenate([seats[:, :2] - seats[:, 2:] / 2, seats[:, :2] + seats[:, 2:] / 2], axis=1)
    tensor = torch.as_tensor(boxes, dtype=torch.float32)
    overlap = box_iou(tensor, tensor).numpy()
    assert (overlap - np.eye(len(boxes)) <= 1e-6).all()


def test_each_face_lands_in_its_box(tmp_path):
    colours = {f"p{i}": np.array([40 + 5 * i, 200 - 4 * i, 100], np.uint8) for i in range(40)}
    photos = []
    for person, colour in colours.items():
        image = np.zeros((250, 250, 3), np.uint8)
        x1, y1, x2, y2 = map(int, NOMINAL_FACE)
        image[y1:y2, x1:x2] = colour
        cv2.imwrite(str(tmp_path / f"{person}.png"), image[:, :, ::-1])
        photos.append((person, True, tmp_path / f"{person}.png"))
    photo = compose(photos, [np.array(NOMINAL_FACE)] * len(photos), SETTINGS, np.random.default_rng(1))
    assert len(photo.seats) == 40 and photo.image.shape == (2160, 3840, 3)
    for seat in photo.seats:
        cx, cy = ((seat.box[:2] + seat.box[2:]) / 2).round().astype(int)
        assert np.abs(photo.image[cy, cx].astype(int) - colours[seat.person]).max() <= 3
        assert 0.85 * 30 <= seat.box[2] - seat.box[0] <= 1.15 * 100


def test_outcome_counts_right_marks_wrong_marks_and_size_bins():
    boxes = np.array([[0, 0, 20, 20], [100, 0, 140, 40], [200, 0, 300, 100], [400, 0, 430, 30]], np.float32)
    seats = [Seat("ann", True, boxes[0]), Seat("bob", True, boxes[1]), Seat("cid", True, boxes[2]),
             Seat("xx", False, boxes[3])]
    detected = np.array([[1, 1, 21, 21], [101, 0, 141, 40], [401, 0, 431, 30], [900, 900, 950, 950]], np.float32)
    assert face_owners(detected, boxes) == [0, 1, 3, None]
    # ann right; bob marked on the stranger; an absent student (dee) on a face of nobody; cid missed
    counts = photo_outcome(seats, boxes, detected, {"ann": 0, "bob": 2, "dee": 3}, ["dee"], {"ann", "bob", "dee"},
                           too_small=frozenset({0, 1}))
    assert counts["present"] == 3 and counts["present_marked"] == 1 and counts["present_not_enrolled"] == 1
    assert counts["missed_flagged_too_small"] == 1  # bob's face was flagged; ann's too, but she was marked
    assert counts["absent_marked"] == 1 and counts["strangers_marked"] == 1 and counts["wrong_marks"] == 2
    bins = {row["face_px"]: (row["present"], row["found"], row["recall"]["k"]) for row in size_figures(counts)}
    assert bins == {"16-24": (1, 1, 1), "32-48": (1, 1, 0), ">=96": (1, 0, 0)}
    assert size_bin(15.9) == "0-16" and size_bin(96) == ">=96"


class FakeEnrolment:
    """The service's ``enroll`` as far as the roster needs it: a photo passes when its name is in ``good``."""

    def __init__(self, good: set[str]):
        self.good, self.rosters = good, []

    def enroll(self, class_name, folder, quiet):
        self.rosters.append({child.name: sorted(photo.name for photo in child.iterdir()) for child in folder.iterdir()})
        enrolled = {child.name: sum(photo.name in self.good for photo in child.iterdir()) for child in folder.iterdir()}
        return type("Result", (), {"enrolled": {name: count for name, count in enrolled.items() if count}})()


def test_rejected_enrolment_photos_are_retaken_and_an_unusable_student_replaced(tmp_path):
    people = {name: [tmp_path / f"{name}_{i}.jpg" for i in range(1, count + 1)]
              for name, count in (("ann", 5), ("bob", 3), ("cat", 3), ("dan", 3))}
    good = {"ann_3.jpg", "ann_4.jpg", "cat_2.jpg", "cat_3.jpg", "dan_1.jpg", "dan_2.jpg"}  # none of bob's
    chosen = ["ann", "bob"]
    class_photo = {"ann": people["ann"][4], "bob": people["bob"][0]}
    service = FakeEnrolment(good)
    replaced = enroll_roster(service, "c", tmp_path / "roster", chosen, class_photo, people,
                             ["ann", "bob", "cat", "dan"], strangers=["cat"], wanted=2, rng=np.random.default_rng(0))
    assert replaced == {"bob": "dan"} and chosen == ["ann", "dan"]  # cat is a stranger of this class
    assert service.rosters[0] == {"ann": ["ann_1.jpg", "ann_2.jpg"], "bob": ["bob_2.jpg", "bob_3.jpg"]}
    assert service.rosters[1]["ann"] == ["ann_1.jpg", "ann_2.jpg", "ann_3.jpg", "ann_4.jpg"]  # two retakes
    assert "bob" not in service.rosters[1] and class_photo["dan"] in people["dan"]
    dan = service.rosters[1]["dan"]
    assert len(dan) == 2 and class_photo["dan"].name not in dan


def test_the_classroom_benchmark_refuses_flags_of_other_benchmarks(capsys):
    with pytest.raises(SystemExit) as refused:
        evaluate.parse_args(["--benchmark", "classroom", "--detector", "mtcnn"])
    assert refused.value.code == 2
    assert "the classroom benchmark runs the attendance config's pipeline" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        evaluate.parse_args(["--benchmark", "lfw", "--classes", "3"])
    assert "--classes applies to --benchmark classroom only" in capsys.readouterr().err


@pytest.mark.slow
def test_classroom_benchmark_end_to_end(tmp_path):
    shared_path("data", "lfw")
    config = tmp_path / "attendance.yaml"
    config.write_text("benchmark:\n  students: 6\n  present: 5\n  strangers: 1\n  enroll_photos: 2\n"
                      "  row_face_px: [60, 90]\n  seats_per_row: 3\n  photo_sizes: [[1280, 720], [640, 360]]\n")
    if importlib.util.find_spec("face_recognition") is None:  # found, not imported: its import has side effects
        pytest.skip("pip install --no-deps face_recognition (as .ci/run does)")
    assert evaluate.main(["--benchmark", "classroom", "--config", str(config), "--classes", "1", "--split", "tune",
                          "--reference", "face_recognition", "--out", str(tmp_path / "classroom.json")]) == 0
    report = json.loads((tmp_path / "classroom.json").read_text())
    assert report["split"] == "tune" and set(report["sizes"]) == {"1280x720", "640x360"}
    large = report["sizes"]["1280x720"]["ours"]
    assert large["recall"]["n"] == 5 and large["absent_marked"]["n"] == 1 and large["strangers_marked"]["n"] == 1
    assert sum(row["present"] for row in large["by_face_px"]) == 5
    assert large["recall"]["k"] >= 5 - large["present_not_enrolled"] - 1  # faces of 54-99 px: at most one missed
    assert not ImageFile.LOAD_TRUNCATED_IMAGES  # face_recognition's import turns it on; the recipe turns it off
    theirs = report["sizes"]["1280x720"]["face_recognition"]
    assert theirs["recall"]["n"] == 5 and theirs["recall"]["k"] >= 3  # HOG finds faces of 54-99 px
    assert (tmp_path / "classroom.png").stat().st_size > 0


def test_the_readme_quotes_the_stored_report_split_which_meets_the_goals():
    """The README's classroom row is the committed report (re-measuring takes 13 min: not in CI), and that report
    meets the issue's goals: >= 99 % at 4K, >= 90 % at 1080p with >= 98 % per face-width bin from 24 px, false marks
    within 0.5 % / 1 %, and more marks than face_recognition's recipe with no more wrong marks."""
    from tests.conftest import ROOT
    report = json.loads((ROOT / "bench" / "accuracy" / "classroom" / "report10.json").read_text())
    readme = (ROOT / "README.md").read_text()
    assert report["split"] == "report" and report["people"] == "LFW folds [10]"
    large, small = report["sizes"]["3840x2160"], report["sizes"]["1920x1080"]
    for sizes in (large, small):
        ours, theirs = sizes["ours"], sizes["face_recognition"]
        assert f"({ours['recall']['k']}/{ours['recall']['n']}, " in readme
        assert ours["recall"]["k"] > theirs["recall"]["k"] and ours["wrong_marks"]["k"] <= theirs["wrong_marks"]["k"]
    assert large["ours"]["recall"]["rate"] >= 0.99 and large["ours"]["wrong_marks"]["rate"] <= 0.005
    assert small["ours"]["recall"]["rate"] >= 0.90 and small["ours"]["wrong_marks"]["rate"] <= 0.01
    assert all(row["recall"]["rate"] >= 0.98 for row in small["ours"]["by_face_px"]
               if int(row["face_px"].split("-")[0].lstrip(">=")) >= 24)
