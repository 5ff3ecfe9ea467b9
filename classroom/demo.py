"""``attendance.py demo``: classes built from LFW and scored.

Per class: enrol ``students`` people with at least ``enroll_photos + 1`` photos, each from ``enroll_photos`` of their
photos, then compose one class photo on a ``canvas`` from *another* photo of ``present`` of them plus one photo each
of ``strangers`` people who are not enrolled, at varied scales and positions. Mark it and count: present students
marked (recall), absent students marked present, strangers taken for a student.

Enrolment is what a school does: a photo the quality checks reject (LFW photos often show a second person) is
retaken, i.e. replaced by the person's next photo, and a person left with no usable photo is replaced by another, so
every class has ``students`` enrolled.
"""
from __future__ import annotations

import itertools
import json
import re
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
from tqdm import tqdm

from classroom.database import Gallery
from classroom.report import annotate
from classroom.service import AttendanceService
from classroom.session import PhotoMarks
from common.config import ConfigError
from common.io import read_image
from common.lfw import lfw_fold_identities, split_folds, split_seed
from common.stats import rate_interval
from matching.protocol import lfw_image_dir
from pipeline.verification import DEFAULT_LFW_ROOT

FACE_CROP = (40, 30, 210, 220)  # x1, y1, x2, y2 of a 250-px LFW photo kept for the class photo: head and neck
SCALE_RANGE = (0.55, 1.0)       # of the crop's size in a canvas cell


def find_lfw(lfw_root: str | None) -> Path:
    """The LFW image folder: the given root, ../shared/data/lfw, or scikit-learn's download (with its progress);
    a clear message when none is reachable."""
    root = Path(lfw_root) if lfw_root else DEFAULT_LFW_ROOT
    if root.is_dir():
        return lfw_image_dir(root)
    if lfw_root:
        raise FileNotFoundError(f"--lfw-root {lfw_root} does not exist")
    try:
        from sklearn.datasets import fetch_lfw_people
        print("../shared/data/lfw not found; downloading LFW with scikit-learn (about 200 MB) ...")
        data_home = Path.home() / "scikit_learn_data"
        # loading is a side effect we do not need: few people have 100 photos, so little is decoded
        fetch_lfw_people(data_home=str(data_home), funneled=True, min_faces_per_person=100, download_if_missing=True)
        return lfw_image_dir(data_home / "lfw_home")
    except Exception as error:  # no network, blocked host, partial download
        raise FileNotFoundError(
            "no LFW images: pass --lfw-root DIR (a folder with <Name>/<Name>_NNNN.jpg, e.g. the deep-funneled "
            "release from https://vis-www.cs.umass.edu/lfw/), or put it at ../shared/data/lfw; scikit-learn's "
            f"download failed too ({type(error).__name__}: {error})") from None


NEAR_THRESHOLD = 0.01  # a present student whose own face scores this close to the class's threshold, either side


def people_with_photos(image_dir: Path, folds=()) -> dict[str, list[Path]]:
    """{person: sorted photos} of every person folder, or only of the people of LFW View 2 ``folds`` (1-based;
    ``people.txt`` next to the image folder)."""
    wanted = None
    if folds:
        people_txt = image_dir.parent / "people.txt"
        if not people_txt.is_file():
            raise ConfigError(f"demo.folds needs LFW's people.txt beside {image_dir}; not found: {people_txt}")
        wanted = set(lfw_fold_identities(people_txt, folds))
    return {folder.name: sorted(folder.glob("*.jpg")) for folder in sorted(image_dir.iterdir())
            if folder.is_dir() and (wanted is None or folder.name in wanted)}


def compose_class_photo(photos: list[Path], canvas_size: tuple[int, int], rng: np.random.Generator
                        ) -> tuple[np.ndarray, list[list[float]]]:
    """(canvas RGB, box of each photo's face region on it) with the photos on a jittered grid at random scales."""
    width, height = canvas_size
    columns = int(np.ceil(np.sqrt(len(photos) * width / height)))
    rows = int(np.ceil(len(photos) / columns))
    cell_w, cell_h = width // columns, height // rows
    canvas = np.full((height, width, 3), rng.integers(90, 170, 3), np.uint8)
    cells = rng.permutation(rows * columns)[:len(photos)]
    boxes = []
    x1, y1, x2, y2 = FACE_CROP
    for photo, cell in zip(photos, cells):
        crop = read_image(photo)[y1:y2, x1:x2]
        side = min(cell_w, cell_h) * rng.uniform(*SCALE_RANGE)
        scale = side / max(crop.shape[:2])
        crop = cv2.resize(crop, (round(crop.shape[1] * scale), round(crop.shape[0] * scale)),
                          interpolation=cv2.INTER_AREA)
        row, column = divmod(int(cell), columns)
        left = column * cell_w + int(rng.integers(0, max(1, cell_w - crop.shape[1])))
        top = row * cell_h + int(rng.integers(0, max(1, cell_h - crop.shape[0])))
        canvas[top:top + crop.shape[0], left:left + crop.shape[1]] = crop
        boxes.append([left, top, left + crop.shape[1], top + crop.shape[0]])
    return canvas, boxes


def enroll_class(service, class_name: str, candidates, people: dict[str, list[Path]], demo: dict, roster: Path,
                 rng: np.random.Generator, rejected: dict[Path, str]) -> tuple[dict[str, Path], set[str]]:
    """Enrol ``demo["students"]`` people taken in turn from ``candidates`` (names), each from ``enroll_photos``
    photos that pass the quality checks; a rejected photo is retaken with the person's next photo, a person with no
    usable photo left is replaced by the next candidate. Each person's class photo is drawn first (one of their photos
    after the first ``enroll_photos``) and never enrolled. Rejected photos are added to ``rejected`` (LFW photo →
    the reason). (class photo of each enrolled student, everyone tried)"""
    wanted = demo["enroll_photos"]
    class_photo: dict[str, Path] = {}
    shown: dict[str, int] = {}     # how many of the person's other photos the roster has shown so far
    accepted: dict[str, int] = {}  # how many of them passed

    def photos_left(name: str) -> bool:  # the person has photos not yet shown (besides the class photo)
        return shown[name] < len(people[name]) - 1

    for attempt in itertools.count():
        members = [name for name in class_photo if accepted[name] or photos_left(name)]
        while len(members) < demo["students"]:
            name = next(candidates, None)
            if name is None:
                raise ConfigError(f"not enough people with usable photos for a class of {demo['students']}")
            class_photo[name] = people[name][int(rng.integers(wanted, len(people[name])))]
            shown[name] = accepted[name] = 0
            members.append(name)
        pending = [name for name in members if accepted[name] < wanted and photos_left(name)]
        if not pending:
            return {name: class_photo[name] for name in members}, set(class_photo)
        enroll_round(service, class_name, roster / str(attempt), pending, people, class_photo, shown, accepted,
                     wanted, rejected)


def enroll_round(service, class_name: str, folder: Path, pending: list[str], people: dict[str, list[Path]],
                 class_photo: dict[str, Path], shown: dict[str, int], accepted: dict[str, int], wanted: int,
                 rejected: dict[Path, str] | None = None) -> None:
    """One enrolment round of a roster: each ``pending`` person shows as many more of their photos (never the class
    photo) as they lack accepted ones, and is enrolled from every photo shown so far; ``shown``, ``accepted``
    (photos passed) and, when given, ``rejected`` (LFW photo → reason: a photo shown again is counted once) are
    updated."""
    for name in pending:
        others = [photo for photo in people[name] if photo != class_photo[name]]
        shown[name] = min(len(others), shown[name] + wanted - accepted[name])
        (folder / name).mkdir(parents=True)
        for photo in others[:shown[name]]:
            (folder / name / photo.name).symlink_to(photo)
    result = service.enroll(class_name, folder, quiet=True)
    for name in pending:
        accepted[name] = result.enrolled.get(name, 0)
    if rejected is not None:
        rejected.update({Path(photo).resolve(): reason for photo, reason in result.rejected})


def _owner(detection_box, regions: list[list[float]]) -> int | None:
    """Index of the pasted photo holding the detection's centre."""
    cx, cy = (detection_box[0] + detection_box[2]) / 2, (detection_box[1] + detection_box[3]) / 2
    for index, (x1, y1, x2, y2) in enumerate(regions):
        if x1 <= cx <= x2 and y1 <= cy <= y2:
            return index
    return None


@dataclass
class DemoClass:
    """One demo class, enrolled and its photo matched: who is in it, and what the service found."""

    index: int
    canvas: np.ndarray = field(repr=False)
    present: list[str]            # enrolled students in the photo
    absent: list[str]             # enrolled students not in it
    strangers: int                # people in it who are not enrolled
    face_people: list[str | None]  # per detected face: the enrolled student pasted there; None: a stranger or
                                   # a face of the background of a pasted photo
    face_strangers: list[bool]    # per detected face: it is a stranger's own face
    gallery: Gallery = field(repr=False)  # its students' names are the columns of ``marks.scores``
    threshold: np.ndarray         # (F, S) what each face needed to score for each student
    marks: PhotoMarks = field(repr=False)
    seconds: float                # marking time
    rejected: dict[Path, str]     # enrolment photos the quality checks rejected (LFW photo → reason)


def demo_classes(service: AttendanceService, demo: dict, people: dict[str, list[Path]], classes: int,
                 workdir: Path) -> Iterator[DemoClass]:
    """``classes`` demo classes (``demo`` settings) enrolled in ``service`` and matched, drawn from ``people``
    (``people_with_photos`` of the split's folds) with the split's seeds (``common.lfw.split_seed``); rosters are
    linked under ``workdir``."""
    eligible = [name for name, photos in people.items() if len(photos) > demo["enroll_photos"]]
    if len(eligible) < demo["students"]:
        raise ConfigError(f"only {len(eligible)} people have more than {demo['enroll_photos']} photos")
    rng = np.random.default_rng(split_seed(demo["split"], demo["seed"]))
    for index in range(classes):
        class_name = f"demo{index}"
        rejected: dict[Path, str] = {}
        class_photos, tried = enroll_class(service, class_name, iter(rng.permutation(eligible).tolist()), people,
                                           demo, workdir / f"roster{index}", rng, rejected)
        enrolled = sorted(class_photos)
        others = [name for name in people if name not in tried]
        strangers = [str(s) for s in rng.choice(others, demo["strangers"], replace=False)]
        present = [str(s) for s in rng.choice(enrolled, demo["present"], replace=False)]
        photos = [class_photos[name] for name in present]
        photos += [people[name][int(rng.integers(0, len(people[name])))] for name in strangers]
        who = present + [None] * len(strangers)
        canvas, regions = compose_class_photo(photos, tuple(demo["canvas"]), rng)
        start = time.perf_counter()
        gallery, thresholds, [marks] = service.match_photos(class_name, [(f"class{index}.jpg", canvas)])
        seconds = time.perf_counter() - start
        owners = [_owner(box, regions) for box in marks.detections.boxes.tolist()]
        yield DemoClass(index, canvas, present, [name for name in enrolled if name not in present], len(strangers),
                        [None if owner is None else who[owner] for owner in owners],
                        [owner is not None and who[owner] is None for owner in owners], gallery,
                        thresholds.for_faces(marks.face_px), marks, seconds, rejected)


def class_outcome(demo_class: DemoClass, scores: np.ndarray, pairs: list[tuple[int, int]], threshold: np.ndarray
                  ) -> tuple[dict, list[dict]]:
    """(counts, errors) of one class's assignment ``pairs`` of its faces (``scores`` (F, S), columns
    ``demo_class.gallery.names``) at ``threshold`` ((F, S) or one number): the service's own, or another rule's
    replayed on the same faces.
    Errors carry the scores that explain them: a present student not marked (their best face score), a student
    marked on someone else's face (an absent student, a stranger or a classmate)."""
    names, people = demo_class.gallery.names, demo_class.face_people
    threshold = np.broadcast_to(threshold, scores.shape)  # (F, S)
    column = {name: student for student, name in enumerate(names)}
    marked = {names[student]: face for face, student in pairs}  # student → the face they were marked on
    counts = {"marks": len(marked), "present": len(demo_class.present), "absent": len(demo_class.absent),
              "strangers": demo_class.strangers,
              "present_marked": sum(1 for name in demo_class.present
                                    if name in marked and people[marked[name]] == name),
              "absent_marked": sum(1 for name in demo_class.absent if name in marked),
              "strangers_marked": sum(1 for face in marked.values() if demo_class.face_strangers[face]),
              # present students whose own face scores this close to the threshold, either side: the students a
              # small change of embedder or threshold decides
              "present_near_threshold": sum(1 for face, name in enumerate(people) if name in demo_class.present
                                            and abs(float(scores[face, column[name]] - threshold[face, column[name]]))
                                            < NEAR_THRESHOLD)}
    errors = []
    for name in demo_class.present:
        if name not in marked or people[marked[name]] != name:
            best = int(scores[:, column[name]].argmax()) if len(scores) else None  # their best-scoring face
            errors.append({"class": demo_class.index, "kind": "present student not marked", "student": name,
                           "best_score": None if best is None else round(float(scores[best, column[name]]), 4),
                           "threshold": None if best is None else round(float(threshold[best, column[name]]), 4)})
    for name, face in marked.items():
        if people[face] == name:
            continue
        kind = ("absent student marked" if name in demo_class.absent else "stranger marked as a student"
                if demo_class.face_strangers[face] else "marked on another face")
        errors.append({"class": demo_class.index, "kind": kind, "student": name, "face_of": people[face],
                       "score": round(float(scores[face, column[name]]), 4),
                       "threshold": round(float(threshold[face, column[name]]), 4)})
    return counts, errors


def rates(totals: dict) -> dict:
    """Precision and the three rates of summed ``class_outcome`` counts."""
    return {"precision": round(totals["present_marked"] / max(totals["marks"], 1), 4),
            "present_marked_rate": round(totals["present_marked"] / max(totals["present"], 1), 4),
            "absent_marked_rate": round(totals["absent_marked"] / max(totals["absent"], 1), 4),
            "strangers_marked_rate": round(totals["strangers_marked"] / max(totals["strangers"], 1), 4)}


REJECTION_NUMBER = re.compile(r"\d+(\.\d+)?")


def rejection_summary(rejected: dict[Path, str]) -> list[tuple[str, int]]:
    """(reason, photos) by decreasing count, reasons with their numbers written N ("N faces: ...")."""
    return Counter(REJECTION_NUMBER.sub("N", reason) for reason in rejected.values()).most_common()


def results_table(figures: dict) -> str:
    """The demo's figures as a small table: each rate with its count and 95 % interval."""
    rows = [("present students marked (recall)", "present_marked", "present"),
            ("marks of the right student (precision)", "present_marked", "marks"),
            ("absent students marked present", "absent_marked", "absent"),
            ("strangers marked as a student", "strangers_marked", "strangers")]
    width = max(len(label) for label, _, _ in rows)
    lines = [f"{'':{width}}  {'rate':>7}  {'count':>11}  95 % interval"]
    for label, count, of in rows:
        low, high = figures["ci95"][f"{count}/{of}"]
        rate = figures[count] / max(figures[of], 1)
        lines.append(f"{label:{width}}  {rate:7.1%}  {figures[count]:>5}/{figures[of]:<5}  {low:.1%}-{high:.1%}")
    return "\n".join(lines)


def run_demo(cfg: dict, lfw_root: str | None, classes: int | None, out: Path, verbose: bool = False,
             split: str | None = None) -> dict:
    """Run the demo's classes (``split``: tune or report, default ``demo.split``) and report: figures in
    ``out/demo.json``, a results table, enrolment rejections counted by reason (``verbose``: listed, with each
    stage's time per photo)."""
    demo = {**cfg["demo"], "split": split or cfg["demo"]["split"]}
    classes = classes or demo["classes"]
    if demo["present"] > demo["students"]:
        raise ConfigError(f"demo.present ({demo['present']}) cannot exceed demo.students ({demo['students']})")
    folds = split_folds(demo["split"], "demo.split")
    people = people_with_photos(find_lfw(lfw_root or demo["lfw_root"]), folds)
    out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="attendance_demo_"))
    totals = Counter()
    seconds_mark = 0.0
    errors: list[dict] = []
    rejected: dict[Path, str] = {}
    service = AttendanceService(cfg, db_path=workdir / "demo.sqlite", verbose=verbose)
    try:
        for demo_class in tqdm(demo_classes(service, demo, people, classes, workdir), total=classes, desc="classes",
                               unit="class"):
            marks = demo_class.marks
            counts, class_errors = class_outcome(demo_class, marks.scores, marks.pairs, demo_class.threshold)
            totals.update(counts)
            errors.extend(class_errors)
            rejected.update(demo_class.rejected)
            seconds_mark += demo_class.seconds
            if demo_class.index == 0:
                cv2.imwrite(str(out / "class0_annotated.jpg"),
                            annotate(demo_class.canvas, marks, demo_class.gallery.names))
    finally:
        service.close()
        shutil.rmtree(workdir, ignore_errors=True)
    figures = {"classes": classes, "split": demo["split"], "people": f"LFW folds {folds}",
               "first_seed": split_seed(demo["split"], demo["seed"]), "students_per_class": demo["students"],
               "present_per_class": demo["present"], "strangers_per_class": demo["strangers"], **rates(totals),
               "seconds_per_class_photo": round(seconds_mark / classes, 2), **totals,
               "seconds_mark": round(seconds_mark, 2),
               "ci95": {f"{count}/{of}": [round(bound, 4) for bound in rate_interval(totals[count], totals[of])]
                        for count, of in (("present_marked", "present"), ("present_marked", "marks"),
                                          ("absent_marked", "absent"), ("strangers_marked", "strangers"))},
               "enrolment_photos_rejected": dict(rejection_summary(rejected)),
               "errors": errors}
    (out / "demo.json").write_text(json.dumps(figures, indent=2), encoding="utf-8")
    if verbose:
        for photo, reason in sorted(rejected.items()):
            print(f"rejected {photo}: {reason}")
    reasons = "; ".join(f"{reason}: {count}" for reason, count in rejection_summary(rejected))
    print(f"enrolment: {len(rejected)} photo{'' if len(rejected) == 1 else 's'} rejected and retaken with the "
          "person's next photo"
          + (f" ({reasons}; --verbose lists them)" if rejected else ""))
    print(f"{classes} classes of the {demo['split']} split (people of LFW folds {folds}, seeds from "
          f"{figures['first_seed']}): {demo['students']} enrolled, {demo['present']} present, {demo['strangers']} "
          f"strangers each; {figures['seconds_per_class_photo']} s per class photo")
    print(results_table(figures))
    print(f"{figures['present_near_threshold']} present students within {NEAR_THRESHOLD} of the threshold → "
          f"{out / 'demo.json'}")
    return figures
