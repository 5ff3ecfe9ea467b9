"""The teachers' web app through FastAPI's TestClient: escaped names, refused uploads, requests that fail leaving
the database as it was, corrections (stored, logged, kept when a session is marked again), the schema migration of
an older database, and the whole workflow on LFW photos with the real pipeline."""
from __future__ import annotations

import csv
import io
import sqlite3
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the web app needs fastapi (requirements.txt)")
from fastapi.testclient import TestClient  # noqa: E402

from classroom.service import attendance_config, matching_settings  # noqa: E402
from pipeline import pipeline_config  # noqa: E402
from classroom.database import MIGRATIONS, SCHEMA, AttendanceDB, EnrolledPhoto, GalleryError, Mark  # noqa: E402
from classroom.webapp import create_app  # noqa: E402
from tests.conftest import ROOT, shared_path  # noqa: E402

EMBEDDER = "stub-embedder"
SCRIPT_NAME = '<script>alert("x")</script>'
IMAGE_NAME = "<img src=x onerror=alert(1)>"
ENROLLED = ["Colin_Powell", "Gloria_Macapagal_Arroyo", "Jean_Chretien"]  # LFW people: 2 enrolment photos each


def enrolment_photos(name: str) -> tuple[int, int]:
    """The numbers of a student's two enrolment photos: Jean_Chretien_0001 also shows another person's face (at
    its lower edge), which the enrolment check rightly refuses."""
    return (2, 4) if name == "Jean_Chretien" else (1, 2)
STRANGER = "Tony_Blair"


class FailingPipeline:
    """Names the embedder, and fails as a model would half-way through a request."""

    embedder = SimpleNamespace(cache_key=EMBEDDER)

    def process(self, image):
        raise RuntimeError("model crashed")


def client_for(tmp_path: Path, *settings: str) -> TestClient:
    cfg = attendance_config(ROOT / "configs" / "attendance.yaml", settings)
    pipeline = FailingPipeline()
    app = create_app(cfg, tmp_path / "class.sqlite", pipelines={"enroll": pipeline, "mark": pipeline})
    return TestClient(app, raise_server_exceptions=False)


def seed_class(tmp_path: Path, students: list[str]) -> None:
    """Class 1 with ``students`` and one session, "mon" on 2026-11-23: the first present, the others absent."""
    with AttendanceDB(tmp_path / "class.sqlite") as db:
        db.create_class("7B", EMBEDDER)
        db.replace_students("7B", EMBEDDER, {name: [EnrolledPhoto(f"{i}.jpg", np.eye(4)[i])] for i, name in
                                             enumerate(students)})
        db.save_session("7B", "mon", "2026-11-23", 0.9, 1, ["room.jpg"],
                        [Mark(students[0], True, 0.95, "room.jpg", [0, 0, 9, 9])]
                        + [Mark(name, False, 0.2, None, None) for name in students[1:]])


def jpeg_bytes(image_rgb: np.ndarray) -> bytes:
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return encoded.tobytes()


def stored_state(tmp_path: Path) -> tuple:
    """Everything a request could change: the database's rows and the files of the sessions."""
    with AttendanceDB(tmp_path / "class.sqlite") as db:
        tables = tuple(tuple(db.connection.execute(f"SELECT * FROM {table} ORDER BY id")) for table in
                       ("classes", "students", "sessions", "marks", "corrections"))
    files = sorted(str(path.relative_to(tmp_path)) for path in (tmp_path / "class_web").rglob("*") if path.is_file())
    return tables, files


def csv_rows(text: str) -> dict[str, dict]:
    return {row["student"]: row for row in csv.DictReader(io.StringIO(text))}


# ---------------------------------------------------------------- escaping
def test_names_are_escaped_on_every_page_and_in_csv(tmp_path):
    client = client_for(tmp_path)
    created = client.post("/classes", data={"name": SCRIPT_NAME}, follow_redirects=False)
    assert created.status_code == 303 and created.headers["location"] == "/classes/1"
    with AttendanceDB(tmp_path / "class.sqlite") as db:
        db.replace_students(SCRIPT_NAME, EMBEDDER, {IMAGE_NAME: [EnrolledPhoto("a.jpg", np.ones(4))],
                                                    "=HYPERLINK(\"http://x\")": [EnrolledPhoto("b.jpg", -np.ones(4))]})
        db.save_session(SCRIPT_NAME, "<b>mon</b>", "2026-11-23", 0.9, 0, ["p.jpg"],
                        [Mark(IMAGE_NAME, True, 0.95, "p.jpg", None),
                         Mark("=HYPERLINK(\"http://x\")", False, 0.1, None, None)])
    for url in ("/", "/classes/1", "/classes/1/sessions/1", "/classes/1/history"):
        page = client.get(url)
        assert page.status_code == 200, url
        assert "<script>alert" not in page.text and "<img src=x" not in page.text and "<b>mon" not in page.text
        assert "Content-Security-Policy" in page.headers
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in client.get("/").text
    session = client.get("/classes/1/sessions/1").text
    assert "&lt;img src=x onerror=alert(1)&gt;" in session and "&lt;b&gt;mon&lt;/b&gt;" in session
    rows = csv_rows(client.get("/classes/1/sessions/1/attendance.csv").text)
    assert set(rows) == {IMAGE_NAME, "'=HYPERLINK(\"http://x\")"}  # a spreadsheet shows it, does not run it
    assert rows[IMAGE_NAME]["present"] == "1" and rows[IMAGE_NAME]["session"] == "<b>mon</b>"


# ---------------------------------------------------------------- bad requests change nothing
def test_bad_uploads_are_refused_with_a_reason_and_change_nothing(tmp_path):
    client = client_for(tmp_path, "web.max_upload_mb=0.05", "web.max_files=2")
    seed_class(tmp_path, ["ann", "bob"])
    before = stored_state(tmp_path)
    photo = jpeg_bytes(np.full((64, 64, 3), 128, np.uint8))

    def mark(*files, **form):
        return client.post("/classes/1/mark", data={"date": "2026-11-24", **form},
                           files=[("photos", file) for file in files])

    not_image = mark(("room.jpg", b"hello, not an image", "image/jpeg"))
    assert not_image.status_code == 400 and "room.jpg: not an image" in not_image.text
    truncated = mark(("ok.jpg", photo, "image/jpeg"), ("cut.jpg", photo[:300], "image/jpeg"))
    assert truncated.status_code == 400 and "cut.jpg: cannot decode image" in truncated.text
    too_large = mark(("big.png", bytes(60_000), "image/png"))
    assert too_large.status_code == 413
    too_many = mark(*[(f"{i}.jpg", photo, "image/jpeg") for i in range(3)])
    assert too_many.status_code == 400 and "at most 2 (web.max_files)" in too_many.text
    no_file = mark(("", b"", "application/octet-stream"))  # what a browser sends when no file is chosen
    assert no_file.status_code == 422 and "missing or invalid form fields: photos" in no_file.text
    assert "date like 2026-11-23" in mark(("ok.jpg", photo, "image/jpeg"), date="23/11/2026").text
    assert mark(("ok.jpg", photo, "image/jpeg")).status_code == 500  # the model fails after the photos are read
    assert client.post("/classes/9/mark", files=[("photos", ("ok.jpg", photo, "image/jpeg"))]).status_code == 404
    bad_name = client.post("/classes/1/enroll", data={"student": "../ann"},
                           files=[("photos", ("a.jpg", photo, "image/jpeg"))])
    assert bad_name.status_code == 400 and "not allowed" in bad_name.text
    assert "at most 60 printable" in client.post("/classes", data={"name": "x" * 61}).text
    assert "already exists" in client.post("/classes", data={"name": "7B"}).text
    cross_site = client.post("/classes", data={"name": "8C"}, headers={"Origin": "http://evil.example"})
    assert cross_site.status_code == 403
    assert stored_state(tmp_path) == before


def test_a_correction_is_stored_logged_all_or_nothing_and_survives_marking_again(tmp_path):
    client = client_for(tmp_path)
    seed_class(tmp_path, ["ann", "bob", "cat"])
    before = stored_state(tmp_path)
    wrong = client.post("/classes/1/sessions/1/correct", data={"student": "ann", "change": "absent", "actual": "dan"})
    assert wrong.status_code == 400 and "&#39;dan&#39; is not enrolled" in wrong.text
    assert stored_state(tmp_path) == before  # ann's change, made first, was rolled back with the failed one

    # the face taken for ann was bob's (wrong student); cat was in the room but missed
    for form in ({"student": "ann", "change": "absent", "actual": "bob"}, {"student": "cat", "change": "present"}):
        assert client.post("/classes/1/sessions/1/correct", data=form, follow_redirects=False).status_code == 303
    rows = csv_rows(client.get("/classes/1/attendance.csv").text)
    assert {name: (row["present"], row["corrected"]) for name, row in rows.items()} == {
        "ann": ("0", "1"), "bob": ("1", "1"), "cat": ("1", "1")}
    with AttendanceDB(tmp_path / "class.sqlite") as db:
        log = [(c["student"], c["previous"], c["present"], c["reason"]) for c in db.corrections("7B")]
        assert log == [("ann", True, False, "wrong student"), ("bob", False, True, "wrong student"),
                       ("cat", False, True, "missed student")]
        # another photo of the same session, in which ann is found again: the teacher's word stands
        db.save_session("7B", "mon", "2026-11-23", 0.9, 0, ["room2.jpg"], [Mark("ann", True, 0.97, "room2.jpg", None)])
        assert {m["student"]: m["present"] for m in db.session_marks("7B")} == {"ann": False, "bob": True, "cat": True}
    history = client.get("/classes/1/history")
    assert history.status_code == 200 and 'id="chart"' in history.text and history.text.count("wrong student") == 2
    rates = csv_rows(client.get("/classes/1/rates.csv").text)
    assert rates["ann"]["rate"] == "0.0" and rates["bob"]["rate"] == "1.0"


def test_an_older_database_is_migrated_and_a_newer_one_refused(tmp_path):
    path = tmp_path / "old.sqlite"
    connection = sqlite3.connect(path)  # as the program wrote it before corrections were logged (version 0)
    connection.executescript(SCHEMA)
    connection.execute("INSERT INTO classes (name, embedder, created) VALUES ('7B', 'm', 0)")
    connection.execute("INSERT INTO students (class_id, name, enrolled) VALUES (1, 'ann', 0)")
    connection.execute("INSERT INTO sessions (class_id, key, date, created, threshold, unknown_faces, photos) "
                       "VALUES (1, 'mon', '2026-11-23', 0, 0.9, 0, '[]')")
    connection.execute("INSERT INTO marks (session_id, student_id, present, score) VALUES (1, 1, 1, 0.95)")
    connection.execute("INSERT INTO embeddings (student_id, photo, vector) VALUES (1, 'a.jpg', ?)",
                       (np.ones(4, np.float32).tobytes(),))
    connection.commit()
    connection.close()
    with AttendanceDB(path) as db:
        assert db.connection.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS) == 2
        assert db.session_marks("7B")[0]["present"] is True
        assert db.gallery("7B").degraded == {}  # enrolled before small-face copies: one threshold for every size
        db.correct_mark("7B", "mon", "ann", False)
        assert db.corrections("7B")[0]["previous"] is True and not db.session_marks("7B")[0]["present"]
        db.connection.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    with pytest.raises(GalleryError, match="newer than this program"):
        AttendanceDB(path)


# ---------------------------------------------------------------- the workflow with the real pipeline
def lfw_class_photo(lfw: Path, path: Path) -> Path:
    """A 1280x720 class photo of two enrolled students (Colin_Powell, Jean_Chretien) and a stranger."""
    from classroom.demo import compose_class_photo
    people = [lfw / name / f"{name}_0010.jpg" for name in (ENROLLED[0], ENROLLED[2], STRANGER)]
    canvas, _ = compose_class_photo(people, (1280, 720), np.random.default_rng(1))
    cv2.imwrite(str(path), cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))
    return path


def shipped_floor() -> float:
    """The lowest score the shipped configs ever accept (the tuned floor of the default embedder)."""
    embedder = pipeline_config(ROOT / "configs" / "pipeline.yaml")["embedding"]["embedder"]
    return matching_settings(attendance_config(ROOT / "configs" / "attendance.yaml")["matching"], embedder)["floor"]


@pytest.mark.slow
def test_enrol_and_mark_lfw_photos_with_the_real_pipeline(tmp_path):
    lfw = shared_path("data", "lfw", "deepfunneled")
    cfg = attendance_config(ROOT / "configs" / "attendance.yaml")
    client = TestClient(create_app(cfg, tmp_path / "class.sqlite"))
    assert client.post("/classes", data={"name": "7B"}, follow_redirects=False).headers["location"] == "/classes/1"
    for name in ENROLLED:
        photos = [("photos", (f"{name}_{i}.jpg", (lfw / name / f"{name}_{i:04d}.jpg").read_bytes(), "image/jpeg"))
                  for i in enrolment_photos(name)]
        blurred = cv2.GaussianBlur(cv2.imread(str(lfw / name / f"{name}_0003.jpg")), (0, 0), 2.5)
        photos.append(("photos", ("blurred.jpg", cv2.imencode(".jpg", blurred)[1].tobytes(), "image/jpeg")))
        enrolled = client.post("/classes/1/enroll", data={"student": name}, files=photos)
        assert enrolled.status_code == 200 and "with 2 photos" in enrolled.text
        assert enrolled.text.count(">accepted<") == 2 and "blurred (sharpness" in enrolled.text
    photo = lfw_class_photo(lfw, tmp_path / "room.jpg")
    marked = client.post("/classes/1/mark", data={"date": "2026-11-23"},
                         files=[("photos", ("room.jpg", photo.read_bytes(), "image/jpeg"))], follow_redirects=False)
    assert marked.status_code == 303 and marked.headers["location"] == "/classes/1/sessions/1"
    page = client.get("/classes/1/sessions/1").text
    assert "2 of 3 students present" in page and 'class="unknown"' in page
    annotated = client.get("/classes/1/sessions/1/uploads/1/annotated_room.jpg")
    assert annotated.status_code == 200 and annotated.content[:3] == b"\xff\xd8\xff"
    assert client.get("/classes/1/sessions/1/uploads/1/..%2Fmanifest.json").status_code == 404
    rows = csv_rows(client.get("/classes/1/sessions/1/attendance.csv").text)
    assert {name: row["present"] for name, row in rows.items()} == {ENROLLED[0]: "1", ENROLLED[1]: "0",
                                                                    ENROLLED[2]: "1"}
    assert float(rows[ENROLLED[0]]["score"]) > shipped_floor()
