"""The attendance workflow over the pipeline and the database, as a Python API (``attendance.py`` and the web app
call it): ``enroll``, ``mark``, ``report``."""
from __future__ import annotations

import csv
import datetime as dt
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from common.errors import InputError
from common.config import ConfigError, build_config, load_yaml, project_path
from common.io import ImageReadError, list_images, read_image
from classroom.database import AttendanceDB, EnrolledPhoto, Gallery, GalleryError, Mark
from classroom.enrolment import QUALITY_DEFAULTS, check_enrollment_photo, roster_warnings, small_face_copy
from classroom.report import annotate, small_face_advice, write_csv, write_html, write_json
from classroom.session import PhotoMarks, merge_session
from common.detections import face_widths
from matching.identification import (MAX_IMPOSTOR_PAIRS, UnknownThresholds, assign, calibrate_thresholds,
                                     calibrate_unknown_threshold, student_scores)
from pipeline import pipeline_config, pipeline_from_config

ATTENDANCE_DEFAULTS = {
    "pipeline": "configs/pipeline.yaml",
    "enroll_set": ["detection.detectors=[mtcnn]"],
    "mark_set": [],
    "database": None,
    "device": "cpu",
    "quality": dict(QUALITY_DEFAULTS),
    "matching": {"target_far": None, "floor": None, "tail": "normal", "min_margin": None,
                 "calibrate_face_px": [16.0, 24.0, 32.0, 48.0], "reliable_face_px": 16.0,
                 "max_impostor_pairs": MAX_IMPOSTOR_PAIRS},
    "demo": {"lfw_root": None, "split": "report", "classes": 20, "students": 30, "present": 25, "strangers": 5,
             "enroll_photos": 2,
             "canvas": [1920, 1080], "seed": 0},
    "benchmark": {"split": "report", "classes": 10, "students": 40, "present": 35, "strangers": 5, "min_photos": 3,
                  "enroll_photos": 3,
                  "row_face_px": [30.0, 40.0, 54.0, 72.0, 100.0], "seats_per_row": 8,
                  "photo_sizes": [[3840, 2160], [1920, 1080]], "seed": 0},
    "web": {"max_upload_mb": 25.0, "max_files": 40, "data_dir": None},
    "config_path": None,
}
PRIVATE_UMASK = 0o077  # files 0600, folders 0700
UNSAFE_NAME = re.compile(r"[\\/\x00]|^\.\.?$")
RATES_CSV, RATES_PNG = "attendance_rates.csv", "attendance_rates.png"  # what ``report`` writes
RATE_FIELDS = ["student", "sessions", "present", "rate"]


# the matching settings whose scale is the embedder's cosine: null in the attendance config takes the value
# ``python -m classroom.tuning --write`` chose for the pipeline's embedder
MATCHING_SETTINGS = ("target_far", "floor", "min_margin")
MATCHING_FILE = project_path("configs/attendance_matching.yaml")


def default_attendance_config() -> Path:
    """``configs/attendance.yaml`` of the project."""
    return project_path("configs/attendance.yaml")


def attendance_config(path=None, set_items=()) -> dict:
    cfg = build_config(ATTENDANCE_DEFAULTS, path, None, set_items)
    for key in MATCHING_SETTINGS:
        value = cfg["matching"][key]
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ConfigError(f"{path or 'the attendance config'}: matching.{key} must be a number, or null for the "
                              f"value tuned for the pipeline's embedder; got {type(value).__name__} {value!r}")
    sizes = cfg["matching"]["calibrate_face_px"]
    if not all(_positive(size) for size in sizes):
        raise ConfigError(f"{path or 'the attendance config'}: matching.calibrate_face_px must be a list of face "
                          f"widths in px ([] for one threshold at every size); got {sizes!r}")
    if not _positive(cfg["matching"]["reliable_face_px"]):
        raise ConfigError(f"{path or 'the attendance config'}: matching.reliable_face_px must be a width in px; got "
                          f"{cfg['matching']['reliable_face_px']!r}")
    cfg["config_path"] = str(path) if path else None
    return cfg


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def matching_settings(matching: dict, embedder: str, tuned_file: Path = MATCHING_FILE) -> dict:
    """``matching`` (the attendance config's section) with each null of ``MATCHING_SETTINGS`` filled from the
    tuned entry of ``embedder`` in ``tuned_file``."""
    missing = [key for key in MATCHING_SETTINGS if matching[key] is None]
    if not missing:
        return matching
    tuned = (load_yaml(tuned_file).get("embedders") or {}) if tuned_file.is_file() else {}
    if embedder not in tuned:
        raise ConfigError(f"matching.{', '.join(missing)} null: take the values tuned for the embedder, but "
                          f"{tuned_file} has none for {embedder!r} (it has: {', '.join(sorted(tuned)) or 'none'}); "
                          "set them in the attendance config, or choose them with python -m classroom.tuning "
                          f"--embedders {embedder.replace('+', ' ')} ... --write")
    return {**matching, **{key: float(tuned[embedder][key]) for key in missing}}


def default_database(cfg: dict) -> Path:
    if cfg["database"]:
        return Path(cfg["database"])
    return (Path(cfg["config_path"]).resolve().parent if cfg["config_path"] else Path.cwd()) / "attendance.sqlite"


def iso_date(value: str | None, flag: str) -> str | None:
    if value is None:
        return None
    try:
        return dt.date.fromisoformat(value).isoformat()
    except ValueError:
        raise InputError(f"{flag} must be a date like 2026-11-23, got {value!r}") from None


def annotated_name(photo: str) -> str:
    """The file name ``mark`` gives the annotated copy of ``photo``."""
    return f"annotated_{Path(photo).stem}.jpg"


def check_student_name(name: str) -> str:
    if not name.strip() or UNSAFE_NAME.search(name):
        raise InputError(f"student name {name!r} is not allowed: no path separators, NUL, '.' or '..'")
    return name


@dataclass
class MarkResult:
    summary: dict                 # what attendance.json holds
    photos: list[PhotoMarks]      # per photo: faces, scores, assignment, aligned chips
    names: list[str]              # the gallery's students (the columns of each photo's scores)
    session_id: int


@dataclass
class EnrollResult:
    enrolled: dict[str, int] = field(default_factory=dict)   # student → photos kept
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (photo, reason)
    warnings: list[str] = field(default_factory=list)
    failed_students: list[str] = field(default_factory=list)


class AttendanceService:
    def __init__(self, cfg: dict, db_path: str | Path | None = None, verbose: bool = False, pipelines=None):
        """The attendance product over one database. It makes every file and folder the process writes from here
        on owner-only (umask 077: the database, its WAL files, reports, annotated photos, face chips, exports),
        since they hold or show children's faces."""
        os.umask(PRIVATE_UMASK)
        self.cfg = cfg
        self.db = AttendanceDB(db_path or default_database(cfg))
        self.verbose = verbose
        self._pipelines = {} if pipelines is None else pipelines  # a shared dict is filled for every sharer

    def close(self) -> None:
        self.db.close()

    def pipeline(self, purpose: str):
        """The pipeline for enrolment photos or class photos (each with its own overrides), built once."""
        if purpose not in self._pipelines:
            pipeline_cfg = pipeline_config(project_path(self.cfg["pipeline"]), self.cfg[f"{purpose}_set"])
            self._pipelines[purpose] = pipeline_from_config(pipeline_cfg, self.cfg["device"], self.verbose)
        return self._pipelines[purpose]

    def matching(self, purpose: str) -> dict:
        """The matching settings for the embedder of the ``purpose`` pipeline (``matching_settings``)."""
        return matching_settings(self.cfg["matching"], self.pipeline(purpose).embedder.name)

    @staticmethod
    def unknown_threshold(vectors: np.ndarray, owners: np.ndarray, settings: dict) -> tuple[float, int]:
        """(threshold, impostor pairs) of one full-size photo against another, calibrated on a gallery's photos with
        the target false-accept rate, tail and floor of ``settings`` (``matching``)."""
        return calibrate_unknown_threshold(vectors, owners, settings["target_far"], settings["floor"],
                                           settings["tail"], settings["max_impostor_pairs"])

    @staticmethod
    def thresholds(gallery: Gallery, settings: dict) -> UnknownThresholds:
        """What a face needs to score for each student, by its size (``calibrate_thresholds`` on the gallery's
        photos and their small-face copies)."""
        return calibrate_thresholds(gallery.vectors, gallery.owners, len(gallery.names), gallery.degraded,
                                    settings["target_far"], settings["floor"], settings["tail"],
                                    settings["max_impostor_pairs"])

    @staticmethod
    def small_face_vectors(embedder, image: np.ndarray, landmarks, sizes) -> dict[float, np.ndarray]:
        """Face width → (D,) the embedding of ``image``'s face (``landmarks`` (1, 5, 2)) shrunk to that width."""
        vectors = {}
        for face_px in sizes:
            small, points = small_face_copy(image, landmarks, float(face_px))
            vectors[float(face_px)] = embedder.embed_faces(small, points)[1].numpy()[0]
        return vectors

    # ------------------------------------------------------------------ enroll
    def enroll(self, class_name: str, roster: Path, keep_photos: bool = False, quiet: bool = False) -> EnrollResult:
        """Enrol every student folder of ``roster`` (``roster/<student>/<photos>``) into the class; ``quiet``: no
        progress bar and no printed rejections or warnings (the caller reports the result)."""
        if not roster.is_dir():
            raise FileNotFoundError(f"roster folder not found: {roster}")
        students = sorted(child for child in roster.iterdir() if child.is_dir())
        if not students:
            raise InputError(f"{roster}: no student folders; expected {roster}/<student>/<photos>")
        for folder in students:  # a bad name stops the run before any photo is processed
            check_student_name(folder.name)
        pipeline = self.pipeline("enroll")
        result, kept, embeddings, photo_names = EnrollResult(), {}, {}, {}
        for folder in tqdm(students, desc="enrolling", unit="student", disable=quiet):
            name = folder.name
            photos = list_images(folder)
            if not photos:
                result.rejected.append((str(folder), "no image files"))
                result.failed_students.append(name)
                continue
            entries = []
            for photo in photos:
                try:
                    image = read_image(photo)
                except ImageReadError as error:
                    result.rejected.append((str(photo), str(error)))
                    continue
                check = check_enrollment_photo(photo.name, image, pipeline.detect(image), pipeline.embedder.alignment,
                                               self.cfg["quality"])
                if not check.ok:
                    result.rejected.append((str(photo), check.reason))
                    continue
                vector = pipeline.embedder.embed_faces(image, check.face.landmarks, check.chip[None])[1].numpy()[0]
                entries.append(EnrolledPhoto(photo.name, vector, photo.read_bytes() if keep_photos else None,
                                             self.small_face_vectors(pipeline.embedder, image, check.face.landmarks,
                                                                     self.cfg["matching"]["calibrate_face_px"])))
            if not entries:
                result.failed_students.append(name)
                continue
            kept[name] = entries
            embeddings[name] = np.stack([entry.vector for entry in entries])
            photo_names[name] = [entry.photo for entry in entries]
        if embeddings:
            names = sorted(embeddings)
            vectors = np.concatenate([embeddings[name] for name in names])
            owners = np.concatenate([np.full(len(embeddings[name]), i) for i, name in enumerate(names)])
            threshold, _ = self.unknown_threshold(vectors, owners, self.matching("enroll"))
            result.warnings = roster_warnings(embeddings, photo_names, threshold)
        if kept:
            self.db.replace_students(class_name, pipeline.embedder.cache_key, kept)
        result.enrolled = {name: len(entries) for name, entries in kept.items()}
        if not quiet:
            for photo, reason in result.rejected:
                print(f"rejected {photo}: {reason}")
            for name in result.failed_students:
                print(f"warning: {name} has no usable photo and is not enrolled")
            for warning in result.warnings:
                print(f"warning: {warning}")
            print(f"{class_name}: {len(kept)} students enrolled ({sum(result.enrolled.values())} photos) in "
                  f"{self.db.path}" + (f"; {len(result.failed_students)} without a usable photo"
                                      if result.failed_students else ""))
        return result

    # ------------------------------------------------------------------ mark
    def match_photos(self, class_name: str, images: list[tuple[str, np.ndarray]]
                     ) -> tuple[Gallery, UnknownThresholds, list[PhotoMarks]]:
        """(gallery, thresholds, [PhotoMarks]) for photos of one session."""
        pipeline = self.pipeline("mark")
        gallery = self.db.gallery(class_name, pipeline.embedder.cache_key)
        if not gallery.names:
            raise GalleryError(f"class {class_name!r} has no enrolled students")
        settings = self.matching("mark")
        thresholds = self.thresholds(gallery, settings)
        results = []
        for name, image in images:
            faces = pipeline.process(image)
            embeddings = faces.embeddings.numpy()
            widths = face_widths(faces.detections.landmarks)  # (F,)
            scores = student_scores(embeddings, gallery)
            pairs = assign(scores, thresholds.for_faces(widths), settings["min_margin"])
            results.append(PhotoMarks(name, faces.detections, scores, pairs, faces.chips, embeddings, widths))
        return gallery, thresholds, results

    def create_class(self, class_name: str) -> int:
        """An empty class for the embedder of the enrolment pipeline."""
        return self.db.create_class(class_name, self.pipeline("enroll").embedder.cache_key)

    def mark(self, class_name: str, photos: list[Path], session: str, date: str, out: Path) -> dict:
        self.db.class_id(class_name)  # a clear error before any work
        return self.mark_images(class_name, [(photo.name, read_image(photo)) for photo in photos], session, date,
                                out).summary

    def mark_images(self, class_name: str, images: list[tuple[str, np.ndarray]], session: str, date: str,
                    out: Path) -> MarkResult:
        """Mark decoded photos ((name, RGB) pairs) of one session, write the outputs to ``out``, then store the
        marks (the last step, one transaction)."""
        gallery, thresholds, results = self.match_photos(class_name, images)
        threshold = thresholds.full_size
        marks = merge_session(results, gallery.names)
        unknown = sum(len(item.unknown) for item in results)
        advice = small_face_advice(results, marks, self.cfg["matching"]["reliable_face_px"],
                                   [image.shape[0] for _, image in images])
        out.mkdir(parents=True, exist_ok=True)
        for (name, image), item in zip(images, results):
            cv2.imwrite(str(out / annotated_name(name)), annotate(image, item, gallery.names))
        write_csv(out / "attendance.csv", marks)
        summary = write_json(out / "attendance.json", marks, unknown, class_name=class_name, session=session,
                             date=date, threshold=round(threshold, 4), impostor_pairs=thresholds.impostor_pairs,
                             gallery_impostor_pairs=thresholds.gallery_pairs,
                             thresholds_by_face_px=thresholds.summary(), small_faces=advice)
        write_html(out / "report.html", class_name, session, marks, results, gallery.names, threshold, advice)
        session_id = self.db.save_session(
            class_name, session, date, threshold, unknown, [name for name, _ in images],
            [Mark(m["student"], m["present"], m["score"], m["photo"], m["box"]) for m in marks])
        faces = sum(len(item.detections) for item in results)
        print(f"{class_name} {session}: {len(summary['present'])} present, {len(summary['absent'])} absent, "
              f"{unknown} unknown faces ({faces} faces in {len(images)} photos; threshold {threshold:.3f}) → {out}")
        if advice:
            print(advice["message"])
        return MarkResult(summary, results, gallery.names, session_id)

    # ------------------------------------------------------------------ report
    def marks_between(self, class_name: str, date_from: str | None, date_to: str | None) -> list[dict]:
        """The class's marks in the date range; none is an error naming the range."""
        marks = self.db.session_marks(class_name, date_from, date_to)
        if not marks:
            raise InputError(f"class {class_name!r} has no sessions between {date_from or 'the start'} and "
                             f"{date_to or 'today'}")
        return marks

    def report(self, class_name: str, date_from: str | None, date_to: str | None, out: Path) -> list[dict]:
        marks = self.marks_between(class_name, date_from, date_to)
        rows = attendance_rates(marks)
        out.mkdir(parents=True, exist_ok=True)
        with (out / RATES_CSV).open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=RATE_FIELDS)
            writer.writeheader()
            writer.writerows(rows)
        plot_rates(rows, out / RATES_PNG, rates_title(class_name, marks))
        for row in rows:
            print(f"{row['student']:30s} {row['present']:3d}/{row['sessions']:<3d} {row['rate']:.0%}")
        print(f"→ {out / RATES_CSV}, {out / RATES_PNG}")
        return rows


def attendance_rates(marks: list[dict]) -> list[dict]:
    """Per student (by name): sessions, sessions present and the rate, from stored marks."""
    rows = []
    for student in sorted({m["student"] for m in marks}):
        own = [m for m in marks if m["student"] == student]
        present = sum(m["present"] for m in own)
        rows.append({"student": student, "sessions": len(own), "present": present,
                     "rate": round(present / len(own), 4)})
    return rows


def rates_title(class_name: str, marks: list[dict]) -> str:
    """The chart's title: the class, how many sessions, first and last date."""
    sessions = sorted({(m["date"], m["session"]) for m in marks})
    return f"{class_name}: {len(sessions)} sessions, {sessions[0][0]} to {sessions[-1][0]}"


def plot_rates(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, max(2.5, 0.28 * len(rows) + 1)), dpi=110)
    ax.barh([r["student"] for r in rows][::-1], [100 * r["rate"] for r in rows][::-1], color="#4a90d9")
    ax.set(xlabel="attendance (%)", xlim=(0, 100), title=title)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)

