"""Attendance: the one-to-one assignment, the calibrated unknown threshold, enrolment checks, the database's
transactions, permissions and concurrent writers, escaped names, and the command line end to end on LFW photos."""
from __future__ import annotations

import json
import multiprocessing
import os
import stat
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from common.detections import Detections
from classroom.database import AttendanceDB, EnrolledPhoto, GalleryError, Mark
from classroom.enrolment import QUALITY_DEFAULTS, check_enrollment_photo, plausible_landmarks, roster_warnings
from classroom.report import write_html
from classroom.service import check_student_name
from classroom.session import PhotoMarks, merge_session
from matching.identification import assign, calibrate_unknown_threshold
from tests.conftest import ROOT, shared_path


def unit(rows) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


# ---------------------------------------------------------------- assignment and threshold
def test_assignment_is_one_to_one_and_leaves_weak_faces_unknown():
    scores = np.array([[0.97, 0.95, 0.10],   # face 0: best A
                       [0.96, 0.80, 0.20],   # face 1: also best A, but A cannot be there twice
                       [0.50, 0.40, 0.85]])  # face 2: C, under the threshold → unknown
    pairs = assign(scores, threshold=0.9)
    # total margin 0.05 + 0.06: both faces marked. Greedy (the best pair first: face 0 as A) would leave face 1 with
    # B at 0.80, under the threshold, and mark one face
    assert sorted(pairs) == [(0, 1), (1, 0)]
    assert assign(scores, threshold=0.99) == []
    assert assign(np.zeros((0, 3)), 0.5) == [] and assign(np.zeros((2, 0)), 0.5) == []


def test_a_face_as_close_to_two_students_stays_unknown_under_a_margin():
    scores = np.array([[0.95, 0.948, 0.80],   # about as much like student 0 as student 1: ambiguous
                       [0.80, 0.85, 0.96],    # clearly student 2
                       [0.93, 0.80, 0.70]])   # clearly student 0
    # no margin: face 0 takes student 1, its second choice, since face 2 needs student 0 more
    assert sorted(assign(scores, 0.9)) == [(0, 1), (1, 2), (2, 0)]
    assert sorted(assign(scores, 0.9, min_margin=0.005)) == [(1, 2), (2, 0)]
    assert assign(scores, 0.9, min_margin=0.2) == []
    assert assign(scores[:, :1], 0.9, min_margin=0.5) == [(0, 0)]  # a class of one: no rival


def test_unknown_threshold_is_the_impostor_quantile_with_a_floor():
    vectors = unit([[1, 0], [0.8, 0.6], [0, 1], [0.6, 0.8]])
    owners = np.array([0, 0, 1, 1])
    # impostor pairs (4): cos 0, 0.6, 0.6, 0.96
    threshold, pairs = calibrate_unknown_threshold(vectors, owners, target_far=0.0, floor=0.5)
    assert pairs == 4 and threshold == pytest.approx(0.96)
    assert calibrate_unknown_threshold(vectors, owners, 0.0, floor=0.99)[0] == 0.99
    assert calibrate_unknown_threshold(vectors[:1], owners[:1], 0.0, floor=0.7) == (0.7, 0)


def test_normal_tail_reads_the_fitted_fisher_normal_not_the_largest_pair():
    rng = np.random.default_rng(0)
    vectors = unit(rng.normal(size=(60, 16)))
    owners = np.repeat(np.arange(30), 2)
    similarity = vectors @ vectors.T
    impostor = similarity[np.triu(owners[:, None] != owners[None, :], k=1)]
    fisher = np.arctanh(impostor)
    threshold, pairs = calibrate_unknown_threshold(vectors, owners, 0.001, floor=-1.0, tail="normal")
    assert pairs == impostor.size == 1740
    assert threshold == pytest.approx(np.tanh(fisher.mean() + 3.0902 * fisher.std()), abs=1e-4)
    # one look-alike pair (cosine 0.95 between students 0 and 1) drags the empirical 1e-4 quantile up to 0.92;
    # the fit over all 1,740 pairs moves by less than 0.01
    before = calibrate_unknown_threshold(vectors, owners, 0.0001, floor=-1.0, tail="normal")[0]
    vectors[1] = unit([vectors[2] + 0.3 * vectors[1]])[0]
    assert vectors[1] @ vectors[2] == pytest.approx(0.9545, abs=1e-4)
    assert calibrate_unknown_threshold(vectors, owners, 0.0001, floor=-1.0, tail="empirical")[0] > 0.92
    after = calibrate_unknown_threshold(vectors, owners, 0.0001, floor=-1.0, tail="normal")[0]
    assert 0 < after - before < 0.01 and after < 0.8
    with pytest.raises(ValueError, match="matching.tail"):
        calibrate_unknown_threshold(vectors, owners, 0.001, floor=0.5, tail="gumbel")


def test_roster_warnings_flag_disagreeing_and_mislabeled_photos():
    embeddings = {"ann": unit([[1, 0, 0], [0.99, 0.1, 0]]), "bob": unit([[0, 1, 0], [1, 0.02, 0]])}
    photos = {"ann": ["a1.jpg", "a2.jpg"], "bob": ["b1.jpg", "b2.jpg"]}
    warnings = roster_warnings(embeddings, photos, threshold=0.9)
    assert any("bob: photos b1.jpg and b2.jpg disagree" in w for w in warnings)
    assert any("bob: photo b2.jpg matches ann" in w for w in warnings)
    assert not any(w.startswith("ann: photos") for w in warnings)


def test_a_session_merges_photos_present_if_seen_in_any():
    def photo(name, scores, pairs):
        boxes = torch.tensor([[0.0, 0, 10, 10]] * len(scores))
        return PhotoMarks(name, Detections(boxes, torch.ones(len(scores)), torch.zeros(len(scores), 5, 2)),
                          np.array(scores, np.float32), pairs)

    marks = merge_session([photo("p1.jpg", [[0.95, 0.1]], [(0, 0)]), photo("p2.jpg", [[0.97, 0.2]], [(0, 0)])],
                          ["ann", "bob"])
    assert marks[0] == {"student": "ann", "present": True, "score": pytest.approx(0.97), "photo": "p2.jpg",
                        "box": [0.0, 0.0, 10.0, 10.0]}
    assert marks[1]["present"] is False and marks[1]["score"] == pytest.approx(0.2)


# ---------------------------------------------------------------- enrolment checks
@pytest.fixture(scope="module")
def mtcnn_and_alignment():
    from pipeline import build_detector
    from embedding.embedder import Alignment
    from embedding.align import scaled_template
    return build_detector("mtcnn"), Alignment(150, tuple(map(tuple, scaled_template(150))))


def test_enrolment_checks_give_reasons(mtcnn_and_alignment):
    from common.io import read_image
    detector, alignment = mtcnn_and_alignment
    photo = read_image(shared_path("data", "lfw", "deepfunneled", "Aaron_Eckhart", "Aaron_Eckhart_0001.jpg"))
    check = lambda image: check_enrollment_photo("x.jpg", image, detector.detect([image])[0], alignment,  # noqa: E731
                                                 QUALITY_DEFAULTS)
    assert check(photo).ok and check(photo).chip.shape == (150, 150, 3)
    assert "blurred" in check(cv2.GaussianBlur(photo, (0, 0), 2.5)).reason
    assert "needs at least 80 px" in check(cv2.resize(photo, (125, 125), interpolation=cv2.INTER_AREA)).reason
    assert check(np.full((250, 250, 3), 120, np.uint8)).reason == "no face found"
    assert "2 faces" in check(np.hstack([photo, photo])).reason
    box = np.array([0, 0, 100, 100], np.float32)
    upside_down = np.array([[30, 70], [70, 70], [50, 50], [35, 30], [65, 30]], np.float32)
    assert "nose" in plausible_landmarks(box, upside_down)


def test_student_names_are_data():
    assert check_student_name("Zoë O'Brien") == "Zoë O'Brien"
    for bad in ("a/b", "..", "a\\b", " "):
        with pytest.raises(ValueError, match="not allowed"):
            check_student_name(bad)


# ---------------------------------------------------------------- database
def test_the_products_default_files_are_never_committed():
    """The default database (and its WAL files), the web app's data folder and the mark / report output folders
    hold children's faces and names: git ignores them."""
    import attendance
    from classroom.service import attendance_config, default_attendance_config, default_database

    database = default_database(attendance_config(default_attendance_config(), []))
    defaults = [database, database.with_name(database.name + "-wal"), database.with_name(f"{database.stem}_web") / "x",
                ROOT / attendance.parse_args(["mark", "--class", "c", "--photo", "p"]).out / "attendance.json",
                ROOT / attendance.parse_args(["report", "--class", "c"]).out / "attendance_rates.csv"]
    paths = [str(path.relative_to(ROOT)) for path in defaults]
    ignored = subprocess.run(["git", "check-ignore", *paths], cwd=ROOT, capture_output=True, text=True)
    if ignored.returncode == 128:
        pytest.skip(f"not a git checkout: {ignored.stderr.strip()}")
    assert sorted(ignored.stdout.split()) == sorted(paths)


def test_database_is_private_transactional_and_merges_sessions(tmp_path):
    path = tmp_path / "a.sqlite"
    with AttendanceDB(path) as db:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        # write-ahead logging: readers (the web app) never wait for a writer
        assert db.connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        db.replace_students("7B", "model-x", {"ann": [EnrolledPhoto("a.jpg", np.ones(4))],
                                              "bob": [EnrolledPhoto("b.jpg", -np.ones(4))]})
        with pytest.raises(GalleryError, match="model-x"):
            db.gallery("7B", "model-y")
        with pytest.raises(GalleryError, match="does not exist.*7B"):
            db.class_id("8C")
        with pytest.raises(TypeError):  # a failure half-way through enrolment leaves the earlier entries
            db.replace_students("7B", "model-x", {"ann": [EnrolledPhoto("new.jpg", np.zeros(4))], "cat": None})
        gallery = db.gallery("7B", "model-x")
        assert gallery.names == ["ann", "bob"] and gallery.photos == ["a.jpg", "b.jpg"]
        db.save_session("7B", "mon", "2026-11-23", 0.9, 1, ["p1.jpg"],
                        [Mark("ann", True, 0.95, "p1.jpg", [0, 0, 1, 1]), Mark("bob", False, 0.3, None, None)])
        db.save_session("7B", "mon", "2026-11-23", 0.9, 0, ["p2.jpg"],
                        [Mark("ann", False, 0.5, None, None), Mark("bob", True, 0.93, "p2.jpg", [1, 1, 2, 2])])
        marks = {m["student"]: m for m in db.session_marks("7B")}
        assert marks["ann"]["present"] and marks["bob"]["present"] and marks["ann"]["score"] == 0.95
        db.correct_mark("7B", "mon", "bob", False)
        assert db.session_marks("7B", "2026-11-01", "2026-11-30")[1] == {
            "session": "mon", "date": "2026-11-23", "student": "bob", "present": False, "score": 0.93,
            "corrected": True}
        assert db.session_marks("7B", "2026-12-01") == []


def _write_session(path, key):
    with AttendanceDB(path) as db:
        for attempt in range(20):
            db.save_session("7B", f"{key}-{attempt}", "2026-11-23", 0.9, 0, ["p.jpg"],
                            [Mark("ann", True, 0.9, "p.jpg", None)])


def test_two_writers_at_once_both_land(tmp_path):
    path = tmp_path / "a.sqlite"
    with AttendanceDB(path) as db:
        db.replace_students("7B", "m", {"ann": [EnrolledPhoto("a.jpg", np.ones(4))]})
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_write_session, args=(path, key)) for key in ("x", "y")]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(60)
    assert [writer.exitcode for writer in writers] == [0, 0]
    with AttendanceDB(path) as db:
        assert len({m["session"] for m in db.session_marks("7B")}) == 40


def test_html_escapes_names(tmp_path):
    name = '<script>alert("x")</script>'
    marks = [{"student": name, "present": False, "score": None, "photo": None, "box": None}]
    # one face left unknown, about as close to both students: its caption names them, escaped, closest first
    one_face = Detections(torch.tensor([[0.0, 0, 100, 100]]), torch.ones(1), torch.zeros(1, 5, 2))
    face = PhotoMarks("class.jpg", one_face, np.array([[0.909, 0.912]], np.float32), [],
                      np.zeros((1, 150, 150, 3), np.uint8))
    write_html(tmp_path / "r.html", "7B & co", "s1", marks + [dict(marks[0], student="Bo")], [face], [name, "Bo"], 0.9)
    text = (tmp_path / "r.html").read_text()
    assert "<script>alert" not in text and "&lt;script&gt;" in text and "7B &amp; co" in text
    assert "class.jpg<br>Bo 0.912<br>&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; 0.909</figcaption>" in text


def test_demo_enrolment_retakes_rejected_photos_and_replaces_people_without_one(tmp_path):
    from types import SimpleNamespace
    from classroom.demo import enroll_class
    people = {name: [tmp_path / f"{name}_{number}.jpg" for number in range(1, count + 1)]
              for name, count in (("Ann", 4), ("Bob", 3), ("Cid", 3), ("Dee", 5))}
    for photos in people.values():
        for photo in photos:
            photo.write_bytes(b"jpeg")
    rejected = {"Ann_1.jpg", "Bob_1.jpg", "Bob_2.jpg", "Bob_3.jpg", "Cid_2.jpg"}

    class FakeService:  # accepts every photo but the rejected ones, as enroll() does after its checks
        def __init__(self):
            self.rosters = []

        def enroll(self, class_name, roster, quiet):
            shown = {folder.name: sorted(photo.name for photo in folder.iterdir()) for folder in roster.iterdir()}
            self.rosters.append(shown)
            accepted = {name: sum(photo not in rejected for photo in photos) for name, photos in shown.items()}
            return SimpleNamespace(enrolled={name: count for name, count in accepted.items() if count},
                                   rejected=[(roster / name / photo, "2 faces: ...") for name, photos in shown.items()
                                             for photo in photos if photo in rejected])

    service = FakeService()
    demo = {"students": 3, "enroll_photos": 2}
    reasons = {}
    class_photos, tried = enroll_class(service, "c", iter(["Ann", "Bob", "Cid", "Dee"]), people, demo,
                                       tmp_path / "roster", np.random.default_rng(0), reasons)
    # Bob has no usable photo: Dee takes his place; Ann's and Cid's rejected photos are retaken with their next one
    assert sorted(class_photos) == ["Ann", "Cid", "Dee"] and tried == {"Ann", "Bob", "Cid", "Dee"}
    for name, photo in class_photos.items():
        assert photo in people[name][2:]  # never one of the first enroll_photos, never shown for enrolment
        assert all(photo.name not in roster.get(name, []) for roster in service.rosters)
    last_roster = {name: photos for roster in service.rosters for name, photos in roster.items()}
    accepted = {name: [p for p in photos if p not in rejected] for name, photos in last_roster.items()}
    assert len(accepted["Ann"]) == 2 and len(accepted["Dee"]) == 2
    assert len(accepted["Cid"]) == 1  # Cid's only other photo was rejected: enrolled from one
    # each rejected photo counted once, under the LFW photo it links to, though later rounds show it again
    shown_rejected = {photo for roster in service.rosters for photos in roster.values() for photo in photos
                      if photo in rejected}
    assert len(shown_rejected) >= 3 and sorted(photo.name for photo in reasons) == sorted(shown_rejected)


# ---------------------------------------------------------------- command line, end to end
def _run(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "attendance.py", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=900)


@pytest.mark.slow
def test_enroll_mark_report_on_lfw_photos(tmp_path):
    from classroom.demo import compose_class_photo
    lfw = shared_path("data", "lfw", "deepfunneled")
    people = ["Colin_Powell", "Gloria_Macapagal_Arroyo", "Jean_Chretien", "Tony_Blair"]
    roster = tmp_path / "roster"
    for name in people[:3]:
        (roster / name).mkdir(parents=True)
        for number in (1, 2):
            (roster / name / f"{number}.jpg").write_bytes((lfw / name / f"{name}_{number:04d}.jpg").read_bytes())
    (roster / "Empty_Student").mkdir()
    (roster / "Empty_Student" / "notes.txt").write_text("no photos")
    db = tmp_path / "class.sqlite"
    enrolled = _run("enroll", "--class", "7B", "--roster", str(roster), "--db", str(db))
    assert enrolled.returncode == 0, enrolled.stderr
    assert "3 students enrolled" in enrolled.stdout and "Empty_Student has no usable photo" in enrolled.stdout
    with AttendanceDB(db) as check:  # each photo also embedded with its face shrunk to calibrate small faces
        gallery = check.gallery("7B")
        assert sorted(gallery.degraded) == [16.0, 24.0, 32.0, 48.0]
        assert all(vectors.shape == gallery.vectors.shape for vectors in gallery.degraded.values())

    # a class photo: other photos of two enrolled students and one stranger
    photos = [lfw / "Colin_Powell" / "Colin_Powell_0010.jpg", lfw / "Jean_Chretien" / "Jean_Chretien_0010.jpg",
              lfw / "Tony_Blair" / "Tony_Blair_0010.jpg"]
    canvas, _ = compose_class_photo(photos, (1280, 720), np.random.default_rng(1))
    photo = tmp_path / "class.jpg"
    cv2.imwrite(str(photo), cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))
    out = tmp_path / "out"
    marked = _run("mark", "--class", "7B", "--photo", str(photo), "--date", "2026-11-23", "--db", str(db),
                  "--out", str(out))
    assert marked.returncode == 0, marked.stderr
    result = json.loads((out / "attendance.json").read_text())
    assert sorted(result["present"]) == ["Colin_Powell", "Jean_Chretien"]
    assert result["absent"] == ["Gloria_Macapagal_Arroyo"] and result["unknown_faces"] >= 1
    assert set(result["thresholds_by_face_px"]) == {"16", "24", "32", "48", "full"}
    assert {p.name for p in out.iterdir()} >= {"attendance.csv", "attendance.json", "report.html",
                                                "annotated_class.jpg"}
    report = _run("report", "--class", "7B", "--db", str(db), "--out", str(tmp_path / "rep"))
    assert report.returncode == 0 and (tmp_path / "rep" / "attendance_rates.png").is_file()
    assert "Colin_Powell" in (tmp_path / "rep" / "attendance_rates.csv").read_text()
    # everything the product wrote (database and its WAL files, reports, annotated photos, folders) is owner-only
    written = [db, *db.parent.glob("class.sqlite-*"), out, *out.iterdir(), tmp_path / "rep",
               *(tmp_path / "rep").iterdir()]
    assert len(written) >= 8
    assert {path.name: oct(stat.S_IMODE(path.stat().st_mode)) for path in written
            if stat.S_IMODE(path.stat().st_mode) & 0o077} == {}

    # bad input: a clear message, exit code 2, and the database as it was
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(photo.read_bytes()[:2000])
    bad_out = ("--out", str(tmp_path / "bad"))
    for args, message in ((("mark", "--class", "9Z", "--photo", str(photo), *bad_out), "class '9Z' does not exist"),
                          (("mark", "--class", "7B", "--photo", str(truncated), *bad_out), "truncated.jpg"),
                          (("enroll", "--class", "7B", "--roster", str(tmp_path / "nowhere")), "roster folder")):
        failed = _run(*args, "--db", str(db))
        assert failed.returncode == 2 and message in failed.stderr, (args, failed.stderr)
    with AttendanceDB(db) as check:
        assert len(check.session_marks("7B")) == 3


@pytest.mark.slow
def test_demo_builds_a_class_from_lfw_and_scores_it(tmp_path):
    shared_path("data", "lfw")
    out = tmp_path / "demo"
    result = _run("demo", "--classes", "1", "--out", str(out), "--set", "demo.students=8", "--set", "demo.present=6",
                  "--set", "demo.strangers=2", "--set", "demo.canvas=[1280, 720]")
    assert result.returncode == 0, result.stderr
    figures = json.loads((out / "demo.json").read_text())
    assert figures["present"] == 6 and figures["strangers"] == 2
    assert figures["present_marked_rate"] >= 5 / 6 and figures["precision"] == 1.0
    assert figures["strangers_marked_rate"] == 0.0 and (out / "class0_annotated.jpg").is_file()
    # the default is the report split: fold 10's people, seeds from 1000
    assert figures["split"] == "report" and figures["people"] == "LFW folds [10]" and figures["first_seed"] == 1000
    # one line for the enrolment's rejections, then the table; no line per rejected photo, no enrolment bars
    lines = result.stdout.splitlines()
    assert not any(line.startswith("rejected ") for line in lines) and "enrolling" not in result.stderr
    assert sum(line.startswith("enrolment: ") for line in lines) == 1
    table = lines[-6:-1]
    assert table[0].split() == ["rate", "count", "95", "%", "interval"]
    assert table[1].startswith("present students marked (recall)") and "/6" in table[1]


def test_demo_draws_people_of_the_chosen_lfw_folds_only(tmp_path):
    from classroom.demo import people_with_photos
    from common.config import ConfigError
    from common.lfw import lfw_fold_identities

    root = shared_path("data", "lfw")
    fold10 = people_with_photos(root / "deepfunneled", [10])
    assert fold10 and set(fold10) <= set(lfw_fold_identities(root / "people.txt", [10]))
    assert all(photos for photos in fold10.values())
    (tmp_path / "deepfunneled" / "Someone").mkdir(parents=True)
    with pytest.raises(ConfigError, match="people.txt"):
        people_with_photos(tmp_path / "deepfunneled", [10])
