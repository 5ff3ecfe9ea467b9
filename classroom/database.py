"""The attendance database (SQLite, one file, no server): classes, students with one embedding per enrolled photo
(and of the photo shrunk to small faces, which calibrates the thresholds of small faces in class photos), sessions
and their marks, and the teacher's corrections of marks.

Every change is one transaction (a re-enrolled student's photos are replaced all at once; a session's marks land
together), the journal is WAL so several ``mark`` runs can write the same file, and the file is created readable
by its owner only.
"""
from __future__ import annotations

import json
import os
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common.errors import UserError

SCHEMA = """
CREATE TABLE IF NOT EXISTS classes (
    id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL, embedder TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS students (
    id INTEGER PRIMARY KEY, class_id INTEGER NOT NULL REFERENCES classes(id) ON DELETE CASCADE,
    name TEXT NOT NULL, enrolled REAL NOT NULL, UNIQUE (class_id, name));
CREATE TABLE IF NOT EXISTS embeddings (
    id INTEGER PRIMARY KEY, student_id INTEGER NOT NULL REFERENCES students(id) ON DELETE CASCADE,
    photo TEXT NOT NULL, vector BLOB NOT NULL, image BLOB);
CREATE TABLE IF NOT EXISTS sessions (
    id INTEGER PRIMARY KEY, class_id INTEGER NOT NULL REFERENCES classes(id) ON DELETE CASCADE,
    key TEXT NOT NULL, date TEXT NOT NULL, created REAL NOT NULL, threshold REAL NOT NULL,
    unknown_faces INTEGER NOT NULL, photos TEXT NOT NULL, UNIQUE (class_id, key));
CREATE TABLE IF NOT EXISTS marks (
    id INTEGER PRIMARY KEY, session_id INTEGER NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    student_id INTEGER NOT NULL REFERENCES students(id) ON DELETE CASCADE, present INTEGER NOT NULL,
    score REAL, photo TEXT, box TEXT, corrected INTEGER NOT NULL DEFAULT 0, UNIQUE (session_id, student_id));
"""
# MIGRATIONS[i] takes a database from ``PRAGMA user_version`` i to i + 1, in one transaction; SCHEMA is version 0,
# so a database written before a migration existed opens and is brought up to date.
MIGRATIONS = (
    ("""CREATE TABLE corrections (
        id INTEGER PRIMARY KEY, session_id INTEGER NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
        student_id INTEGER NOT NULL REFERENCES students(id) ON DELETE CASCADE, present INTEGER NOT NULL,
        previous INTEGER, reason TEXT NOT NULL, created REAL NOT NULL)""",),
    ("""CREATE TABLE degraded_embeddings (
        id INTEGER PRIMARY KEY, embedding_id INTEGER NOT NULL REFERENCES embeddings(id) ON DELETE CASCADE,
        face_px REAL NOT NULL, vector BLOB NOT NULL, UNIQUE (embedding_id, face_px))""",),
)
BUSY_TIMEOUT_MS = 60_000  # a concurrent writer waits this long for the lock


class GalleryError(UserError, ValueError):
    """A request the database cannot satisfy (unknown class, wrong embedder ...); the message says what to do."""


@dataclass
class Gallery:
    """A class's enrolled faces: ``vectors`` (M, D) float32, ``owners`` (M,) index into ``names``; ``degraded``:
    face width (px) → (M, D) the same photos embedded with faces that small, for the sizes every photo has."""

    class_id: int
    names: list[str]
    vectors: np.ndarray
    owners: np.ndarray
    photos: list[str]
    degraded: dict[float, np.ndarray] = field(default_factory=dict)


@dataclass
class EnrolledPhoto:
    """What enrolment stores of one accepted photo."""

    photo: str                    # its file name
    vector: np.ndarray            # (D,) its embedding
    image: bytes | None = None    # the photo itself, only when asked to keep it
    degraded: dict[float, np.ndarray] = field(default_factory=dict)  # face width (px) → (D,) of the shrunk photo


@dataclass
class Mark:
    student: str
    present: bool
    score: float | None
    photo: str | None
    box: list[float] | None


def _blob(vector: np.ndarray) -> bytes:
    return np.asarray(vector, np.float32).tobytes()


class AttendanceDB:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            descriptor = os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600)  # owner-only from the first byte
            os.close(descriptor)
        try:
            self.connection = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
            self.connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            self.connection.execute("PRAGMA journal_mode = WAL")
            self.connection.execute("PRAGMA foreign_keys = ON")
            self.connection.executescript(SCHEMA)
            self._migrate()
        except sqlite3.DatabaseError as error:
            raise GalleryError(f"{self.path}: not an attendance database ({error})") from None

    def _migrate(self) -> None:
        version = self.connection.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise GalleryError(f"{self.path}: database schema version {version} is newer than this program's "
                               f"({len(MIGRATIONS)}); update the program")
        while version < len(MIGRATIONS):
            with self.transaction() as connection:  # read again under the write lock: another process may have
                version = connection.execute("PRAGMA user_version").fetchone()[0]  # migrated meanwhile
                if version < len(MIGRATIONS):
                    for statement in MIGRATIONS[version]:
                        connection.execute(statement)
                    version += 1
                    connection.execute(f"PRAGMA user_version = {version}")

    def close(self) -> None:
        self.connection.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @contextmanager
    def transaction(self):
        """BEGIN IMMEDIATE … COMMIT, or ROLLBACK on any error: nothing half-written."""
        self.connection.execute("BEGIN IMMEDIATE")
        try:
            yield self.connection
        except BaseException:
            self.connection.execute("ROLLBACK")
            raise
        self.connection.execute("COMMIT")

    # ------------------------------------------------------------------ classes and students
    def class_names(self) -> list[str]:
        return [row[0] for row in self.connection.execute("SELECT name FROM classes ORDER BY name")]

    def classes(self) -> dict[int, str]:
        """id → name of every class, by name."""
        return dict(self.connection.execute("SELECT id, name FROM classes ORDER BY name"))

    def create_class(self, name: str, embedder: str) -> int:
        """A new, empty class for embeddings of ``embedder``; an error if the name is taken."""
        with self.transaction() as connection:
            if connection.execute("SELECT 1 FROM classes WHERE name = ?", (name,)).fetchone():
                raise GalleryError(f"class {name!r} already exists in {self.path}")
            return self.ensure_class(connection, name, embedder)

    def class_id(self, name: str, embedder: str | None = None) -> int:
        """The class's id; ``embedder`` (cache key of the embedder in use) must match the one it was enrolled with."""
        row = self.connection.execute("SELECT id, embedder FROM classes WHERE name = ?", (name,)).fetchone()
        if row is None:
            known = ", ".join(self.class_names()) or "none yet"
            raise GalleryError(f"class {name!r} does not exist in {self.path} (classes: {known}); "
                               f"create it with: attendance.py enroll --class {name!r} --roster DIR")
        if embedder is not None and row[1] != embedder:
            raise GalleryError(f"class {name!r} was enrolled with embedder {row[1]}, but {embedder} is configured; "
                               "embeddings of different models cannot be compared: re-enroll the class, or set "
                               "embedding.embedder (and weights, flip) in the pipeline config, or in the attendance "
                               "config's enroll_set and mark_set, back to what it was enrolled with (classes "
                               "enrolled before the fusion became the default: embedding.embedder=dlib_resnet)")
        return row[0]

    def ensure_class(self, connection, name: str, embedder: str) -> int:
        row = connection.execute("SELECT id, embedder FROM classes WHERE name = ?", (name,)).fetchone()
        if row is None:
            return connection.execute("INSERT INTO classes (name, embedder, created) VALUES (?, ?, ?)",
                                      (name, embedder, time.time())).lastrowid
        if row[1] != embedder:
            raise GalleryError(f"class {name!r} holds embeddings of {row[1]}; enrolling with {embedder} would mix "
                               "two models. Use the class's embedder or another class name")
        return row[0]

    def replace_students(self, class_name: str, embedder: str, students: dict[str, list[EnrolledPhoto]]) -> None:
        """Enrol ``students`` (name → their accepted photos) in one transaction, replacing the earlier entries of
        each."""
        with self.transaction() as connection:
            class_id = self.ensure_class(connection, class_name, embedder)
            for name, photos in students.items():
                connection.execute("DELETE FROM students WHERE class_id = ? AND name = ?", (class_id, name))
                student_id = connection.execute("INSERT INTO students (class_id, name, enrolled) VALUES (?, ?, ?)",
                                                (class_id, name, time.time())).lastrowid
                for entry in photos:
                    embedding_id = connection.execute(
                        "INSERT INTO embeddings (student_id, photo, vector, image) VALUES (?, ?, ?, ?)",
                        (student_id, entry.photo, _blob(entry.vector), entry.image)).lastrowid
                    connection.executemany(
                        "INSERT INTO degraded_embeddings (embedding_id, face_px, vector) VALUES (?, ?, ?)",
                        [(embedding_id, float(face_px), _blob(vector)) for face_px, vector in entry.degraded.items()])

    def gallery(self, class_name: str, embedder: str | None = None) -> Gallery:
        class_id = self.class_id(class_name, embedder)
        students = self.connection.execute("SELECT id, name FROM students WHERE class_id = ? ORDER BY name",
                                           (class_id,)).fetchall()
        index = {student_id: i for i, (student_id, _) in enumerate(students)}
        rows = self.connection.execute(
            "SELECT e.id, e.student_id, e.vector, e.photo FROM embeddings e JOIN students s ON s.id = e.student_id "
            "WHERE s.class_id = ? ORDER BY e.id", (class_id,)).fetchall()
        vectors = (np.stack([np.frombuffer(vector, np.float32) for _, _, vector, _ in rows]) if rows
                   else np.zeros((0, 0), np.float32))
        owners = np.array([index[student_id] for _, student_id, _, _ in rows], dtype=np.int64)
        row_of = {embedding_id: row for row, (embedding_id, _, _, _) in enumerate(rows)}
        shrunk: dict[float, dict[int, np.ndarray]] = {}
        for embedding_id, face_px, vector in self.connection.execute(
                "SELECT d.embedding_id, d.face_px, d.vector FROM degraded_embeddings d "
                "JOIN embeddings e ON e.id = d.embedding_id JOIN students s ON s.id = e.student_id "
                "WHERE s.class_id = ?", (class_id,)):
            shrunk.setdefault(face_px, {})[row_of[embedding_id]] = np.frombuffer(vector, np.float32)
        degraded = {face_px: np.stack([by_row[row] for row in range(len(rows))])
                    for face_px, by_row in sorted(shrunk.items()) if len(by_row) == len(rows)}
        return Gallery(class_id, [name for _, name in students], vectors, owners,
                       [photo for _, _, _, photo in rows], degraded)

    # ------------------------------------------------------------------ sessions
    def save_session(self, class_name: str, key: str, date: str, threshold: float, unknown_faces: int,
                     photos: list[str], marks: list[Mark]) -> int:
        """Store a session's marks in one transaction. Marking a session again merges: a student is present if
        present in either run, with the better score; a mark the teacher corrected keeps the correction."""
        class_id = self.class_id(class_name)
        with self.transaction() as connection:
            row = connection.execute("SELECT id, unknown_faces, photos FROM sessions WHERE class_id = ? AND key = ?",
                                     (class_id, key)).fetchone()
            if row is None:
                session_id = connection.execute(
                    "INSERT INTO sessions (class_id, key, date, created, threshold, unknown_faces, photos) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (class_id, key, date, time.time(), threshold, unknown_faces, json.dumps(photos))).lastrowid
            else:
                session_id = row[0]
                connection.execute("UPDATE sessions SET unknown_faces = ?, photos = ? WHERE id = ?",
                                   (row[1] + unknown_faces, json.dumps(json.loads(row[2]) + photos), session_id))
            student_ids = dict(connection.execute("SELECT name, id FROM students WHERE class_id = ?", (class_id,)))
            for mark in marks:
                connection.execute(
                    "INSERT INTO marks (session_id, student_id, present, score, photo, box) VALUES (?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (session_id, student_id) DO UPDATE SET "
                    "present = CASE WHEN corrected THEN present ELSE MAX(present, excluded.present) END, "
                    "photo = CASE WHEN excluded.score > COALESCE(score, -1e9) THEN excluded.photo ELSE photo END, "
                    "box = CASE WHEN excluded.score > COALESCE(score, -1e9) THEN excluded.box ELSE box END, "
                    "score = MAX(COALESCE(score, -1e9), COALESCE(excluded.score, -1e9))",
                    (session_id, student_ids[mark.student], int(mark.present), mark.score, mark.photo,
                     json.dumps(mark.box) if mark.box is not None else None))
        return session_id

    def sessions(self, class_name: str) -> list[dict]:
        """The class's sessions, newest date first."""
        rows = self.connection.execute(
            "SELECT id, key, date, threshold, unknown_faces, photos FROM sessions WHERE class_id = ? "
            "ORDER BY date DESC, created DESC", (self.class_id(class_name),)).fetchall()
        return [{"id": row[0], "session": row[1], "date": row[2], "threshold": row[3], "unknown_faces": row[4],
                 "photos": json.loads(row[5])} for row in rows]

    def correct_mark(self, class_name: str, key: str, student: str, present: bool, reason: str = "teacher") -> None:
        self.correct_marks(class_name, key, {student: present}, reason)

    def correct_marks(self, class_name: str, key: str, changes: dict[str, bool], reason: str) -> None:
        """A teacher's corrections of one session's marks (student → present), all or none: each mark is set and
        flagged corrected, and logged in ``corrections`` with its previous value and ``reason``. A student enrolled
        after the session gets a mark."""
        class_id = self.class_id(class_name)
        with self.transaction() as connection:
            row = connection.execute("SELECT id FROM sessions WHERE class_id = ? AND key = ?",
                                     (class_id, key)).fetchone()
            if row is None:
                raise GalleryError(f"class {class_name!r} has no session {key!r}")
            session_id = row[0]
            for student, present in changes.items():
                found = connection.execute("SELECT id FROM students WHERE class_id = ? AND name = ?",
                                           (class_id, student)).fetchone()
                if found is None:
                    raise GalleryError(f"{student!r} is not enrolled in class {class_name!r}")
                previous = connection.execute("SELECT present FROM marks WHERE session_id = ? AND student_id = ?",
                                              (session_id, found[0])).fetchone()
                connection.execute(
                    "INSERT INTO marks (session_id, student_id, present, corrected) VALUES (?, ?, ?, 1) "
                    "ON CONFLICT (session_id, student_id) DO UPDATE SET present = excluded.present, corrected = 1",
                    (session_id, found[0], int(present)))
                connection.execute(
                    "INSERT INTO corrections (session_id, student_id, present, previous, reason, created) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (session_id, found[0], int(present), None if previous is None else previous[0], reason,
                     time.time()))

    def corrections(self, class_name: str, key: str | None = None) -> list[dict]:
        """The log of corrections of the class's sessions (or of session ``key``), oldest first."""
        rows = self.connection.execute(
            "SELECT s.key, s.date, t.name, c.present, c.previous, c.reason, c.created FROM corrections c "
            "JOIN sessions s ON s.id = c.session_id JOIN students t ON t.id = c.student_id "
            "WHERE s.class_id = ? AND (? IS NULL OR s.key = ?) ORDER BY c.id",
            (self.class_id(class_name), key, key)).fetchall()
        return [{"session": row[0], "date": row[1], "student": row[2], "present": bool(row[3]),
                 "previous": None if row[4] is None else bool(row[4]), "reason": row[5], "created": row[6]}
                for row in rows]

    def session_marks(self, class_name: str, date_from: str | None = None, date_to: str | None = None) -> list[dict]:
        """Every mark of the class's sessions with ``date_from <= date <= date_to`` (ISO dates), by date."""
        class_id = self.class_id(class_name)
        rows = self.connection.execute(
            "SELECT s.key, s.date, t.name, m.present, m.score, m.corrected FROM marks m "
            "JOIN sessions s ON s.id = m.session_id JOIN students t ON t.id = m.student_id "
            "WHERE s.class_id = ? AND s.date >= ? AND s.date <= ? ORDER BY s.date, s.key, t.name",
            (class_id, date_from or "0000-00-00", date_to or "9999-99-99")).fetchall()
        return [{"session": key, "date": date, "student": name, "present": bool(present), "score": score,
                 "corrected": bool(corrected)} for key, date, name, present, score, corrected in rows]
