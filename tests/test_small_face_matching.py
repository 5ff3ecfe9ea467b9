"""Resolution-aware matching: thresholds per face size (from enrolment photos shrunk to that size) and per student
(a best-of-k score over k photos), stored small-face embeddings, and the advice to photograph the back rows again."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy.stats import norm

from classroom.database import AttendanceDB, EnrolledPhoto
from classroom.enrolment import small_face_copy
from classroom.report import face_rows, small_face_advice
from classroom.service import attendance_config
from classroom.session import PhotoMarks
from common.config import ConfigError
from common.detections import Detections, face_widths
from matching.identification import UnknownThresholds, assign, calibrate_thresholds, fisher


def unit(rows) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float64)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def _gallery(photos_per_student, dim=64, seed=0):
    rng = np.random.default_rng(seed)
    owners = np.repeat(np.arange(len(photos_per_student)), photos_per_student)
    return unit(rng.normal(size=(len(owners), dim))), owners


def test_a_student_enrolled_from_k_photos_is_held_to_target_far_over_k():
    vectors, owners = _gallery([1, 3, 2])
    thresholds = calibrate_thresholds(vectors, owners, 3, {}, target_far=1e-3, floor=-1.0, tail="normal")
    pairs = fisher(vectors @ vectors.T)[np.triu(owners[:, None] != owners[None, :], k=1)]
    expected = np.tanh(pairs.mean() + norm.ppf(1 - 1e-3 / np.array([1, 3, 2])) * pairs.std())
    np.testing.assert_allclose(thresholds.table[-1], expected, rtol=1e-12)
    assert thresholds.table[-1, 1] > thresholds.table[-1, 2] > thresholds.table[-1, 0]
    assert thresholds.full_size == pytest.approx(expected[0]) and thresholds.impostor_pairs == 11
    empirical = calibrate_thresholds(vectors, owners, 3, {}, 0.2, -1.0, tail="empirical").table[-1]
    raw = (vectors @ vectors.T)[np.triu(owners[:, None] != owners[None, :], k=1)]
    np.testing.assert_allclose(empirical, np.quantile(raw, 1 - 0.2 / np.array([1, 3, 2])))


def test_small_faces_get_their_own_impostor_scores_and_the_floor_moves_with_them():
    vectors, owners = _gallery([2, 2, 2, 2], dim=8, seed=1)
    # shrunk photos: blurred faces look alike (their embeddings drift towards a common one): impostors score higher
    common = unit(vectors.sum(0, keepdims=True))  # (1, 8)
    degraded = {16.0: unit(vectors + 0.8 * common), 32.0: unit(vectors + 0.3 * vectors)}
    thresholds = calibrate_thresholds(vectors, owners, 4, degraded, target_far=1e-2, floor=-1.0, tail="normal")
    assert thresholds.face_px == (16.0, 32.0) and thresholds.table.shape == (3, 4)
    different = owners[:, None] != owners[None, :]
    small = fisher((degraded[16.0] @ vectors.T)[different])  # each shrunk photo against the others' full ones
    quantile = np.tanh(small.mean() + norm.ppf(1 - 1e-2 / 2) * small.std())
    np.testing.assert_allclose(thresholds.table[0], quantile)
    assert np.all(thresholds.table[0] > thresholds.table[2])
    np.testing.assert_allclose(thresholds.table[1], thresholds.table[2], atol=1e-9)  # a copy that changed nothing
    floored = calibrate_thresholds(vectors, owners, 4, degraded, target_far=1e-2, floor=0.99, tail="normal")
    full = fisher(vectors @ vectors.T)[np.triu(different, k=1)]
    shifted = np.tanh(np.arctanh(0.99) + small.mean() - full.mean())
    np.testing.assert_allclose(floored.table[0], np.maximum(quantile, shifted))
    assert np.all(floored.table[2] == 0.99) and small.mean() > full.mean() and shifted > 0.99


def test_a_face_takes_the_threshold_of_the_nearest_calibrated_width():
    table = np.arange(5, dtype=np.float64)[:, None] * np.ones((1, 2))  # (5, 2): row r holds r
    thresholds = UnknownThresholds((16.0, 24.0, 32.0, 48.0), table, 4.0, 0, 0)
    widths = np.array([4, 19, 20, 27, 28, 39, 40, 67, 68, 500])
    assert thresholds.rows(widths).tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert thresholds.for_faces(widths[:2]).shape == (2, 2)
    single = UnknownThresholds((), np.full((1, 3), 0.7), 0.7, 0, 0)
    assert single.rows(np.array([5.0, 500.0])).tolist() == [0, 0]
    assert thresholds.summary()["full"] == [4.0, 4.0] and thresholds.summary()["16"] == [0.0, 0.0]


def test_assignment_takes_a_threshold_per_face_and_student():
    scores = np.array([[0.60, 0.10], [0.10, 0.60]])
    per_face = np.array([[0.5, 0.5], [0.7, 0.7]])  # face 1 is small: held higher here
    assert assign(scores, per_face) == [(0, 0)]
    assert sorted(assign(scores, 0.5)) == [(0, 0), (1, 1)]


def test_the_gallery_keeps_small_face_embeddings_of_every_photo_and_deletes_them_with_it(tmp_path):
    with AttendanceDB(tmp_path / "a.sqlite") as db:
        photo = EnrolledPhoto("a.jpg", np.ones(4), None, {16.0: np.full(4, 2.0), 24.0: np.full(4, 3.0)})
        other = EnrolledPhoto("b.jpg", -np.ones(4), None, {16.0: np.full(4, 5.0)})  # no 24-px copy
        db.replace_students("7B", "m", {"ann": [photo], "bob": [other]})
        gallery = db.gallery("7B")
        assert list(gallery.degraded) == [16.0]  # a size some photo lacks is left out
        np.testing.assert_array_equal(gallery.degraded[16.0], [[2.0] * 4, [5.0] * 4])
        db.replace_students("7B", "m", {"ann": [EnrolledPhoto("c.jpg", np.zeros(4))]})
        assert db.gallery("7B").degraded == {}
        assert db.connection.execute("SELECT COUNT(*) FROM degraded_embeddings").fetchone()[0] == 1  # bob's only


def test_a_small_face_copy_is_that_small_with_its_landmarks():
    image = np.random.default_rng(0).integers(0, 255, (250, 250, 3), dtype=np.uint8)
    landmarks = torch.tensor([[[100.0, 110.0], [150.0, 110.0], [125.0, 140.0], [105.0, 165.0], [145.0, 165.0]]])
    small, points = small_face_copy(image, landmarks, 21.0)
    assert small.shape == (50, 50, 3) and face_widths(points)[0] == pytest.approx(21.0, rel=0.01)
    same, unchanged = small_face_copy(image, landmarks, 500.0)  # already smaller: only JPEG-coded
    assert same.shape == image.shape and torch.equal(unchanged, landmarks)


def _photo(boxes, widths, pairs):
    boxes = torch.tensor(boxes, dtype=torch.float32)
    detections = Detections(boxes, torch.ones(len(boxes)), torch.zeros(len(boxes), 5, 2))
    return PhotoMarks("class.jpg", detections, np.zeros((len(boxes), 2)), pairs, face_px=np.array(widths, float))


def test_unknown_small_faces_are_named_by_row_with_a_request_for_a_closer_photo():
    boxes = [[100, 100, 112, 114], [300, 104, 312, 118], [500, 98, 512, 112],   # back row, 12-px faces
             [100, 300, 118, 320], [300, 305, 318, 325],                        # middle row, 18 px
             [100, 600, 160, 670]]                                              # front row, 60 px
    assert [row.tolist() for row in face_rows(np.array(boxes, np.float32))] == [[2, 0, 1], [3, 4], [5]]
    photo = _photo(boxes, [12, 12, 12, 18, 18, 60], pairs=[(3, 0)])
    marks = [{"present": True}, {"present": False}]
    advice = small_face_advice([photo], marks, reliable_px=24, heights=[1000])
    assert [row["faces"] for row in advice["rows"]] == [3, 1] and advice["rows"][0]["from_top"] == [0.1, 0.12]
    assert "take a closer photo" in advice["message"] and "1 students are not marked" in advice["message"]
    assert small_face_advice([photo], [{"present": True}] * 2, 24, [1000]) is None  # everyone marked
    assert small_face_advice([photo], marks, 10, [1000]) is None  # no unknown face under the reliable width


@pytest.mark.parametrize("item, message", [("matching.calibrate_face_px=16", "must be list"),
                                           ("matching.calibrate_face_px=[16, -2]", "must be a list of face widths"),
                                           ("matching.reliable_face_px=-3", "must be a width in px")])
def test_small_face_settings_are_checked(item, message):
    with pytest.raises(ConfigError, match=message):
        attendance_config(None, [item])
    assert attendance_config(None, ["matching.calibrate_face_px=[]"])["matching"]["calibrate_face_px"] == []


class StubPipeline:
    """A class photo's faces as given: a large face of student 0, two 12-px faces nobody can be sure of."""

    embedder = SimpleNamespace(cache_key="stub", name="stub")

    def process(self, image):
        eyes = {0: (100.0, 200.0), 1: (400.0, 405.7), 2: (600.0, 605.7)}  # eye distances 100, 5.7, 5.7 px
        landmarks = torch.tensor([[[left, 60.0], [right, 60.0], [0, 0], [0, 0], [0, 0]]
                                  for left, right in eyes.values()])
        landmarks[:, 2:, :] = landmarks[:, :1, :] + torch.tensor([10.0, 10.0])
        boxes = torch.tensor([[90.0, 40.0, 210.0, 160.0], [398.0, 55.0, 410.0, 67.0], [598.0, 54.0, 610.0, 66.0]])
        detections = Detections(boxes, torch.ones(3), landmarks)
        embeddings = torch.tensor(unit([[1.0, 0.0, 0.0, 0.0], [0.1, 0.1, 0.2, 0.97], [0.2, 0.1, 0.1, 0.97]]),
                                  dtype=torch.float32)
        return SimpleNamespace(detections=detections, embeddings=embeddings, chips=np.zeros((3, 8, 8, 3), np.uint8))


def test_marking_writes_thresholds_by_size_and_asks_for_a_closer_photo_of_the_back_row(tmp_path):
    from classroom.service import AttendanceService
    from classroom.webapp.app import MANIFEST, write_manifest
    cfg = attendance_config(None, ["matching.target_far=0.001", "matching.floor=0.5", "matching.min_margin=0.0"])
    service = AttendanceService(cfg, tmp_path / "a.sqlite", pipelines={"enroll": StubPipeline(),
                                                                       "mark": StubPipeline()})
    rng = np.random.default_rng(0)
    students = {}
    for index, name in enumerate(["ann", "bob", "cat"]):
        vectors = unit(np.eye(4)[index] + 0.05 * rng.normal(size=(2, 4)))
        students[name] = [EnrolledPhoto(f"{name}{k}.jpg", vectors[k], None, {16.0: vectors[k], 48.0: vectors[k]})
                          for k in range(2)]
    service.db.replace_students("7B", "stub", students)
    result = service.mark_images("7B", [("room.jpg", np.zeros((720, 1280, 3), np.uint8))], "mon", "2026-11-23",
                                 tmp_path / "out")
    summary = json.loads((tmp_path / "out" / "attendance.json").read_text())
    assert summary["present"] == ["ann"] and set(summary["thresholds_by_face_px"]) == {"16", "48", "full"}
    advice = summary["small_faces"]
    assert advice["rows"] == [{"photo": "room.jpg", "faces": 2, "top_px": 54, "bottom_px": 67,
                               "from_top": [0.07, 0.09], "face_px": 12.0}]
    assert "take a closer photo" in (tmp_path / "out" / "report.html").read_text()
    write_manifest(tmp_path / "out", result)
    assert "take a closer photo" in json.loads((tmp_path / "out" / MANIFEST).read_text())["advice"]
    service.close()
