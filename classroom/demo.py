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
import shutil
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from classroom.report import annotate
from classroom.service import AttendanceService
from common.config import ConfigError
from common.io import read_image
from common.lfw import lfw_fold_identities
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


def near_threshold(present: list[str], who: list[str | None], marks, names: list[str], threshold: float,
                   regions: list[list[float]]) -> int:
    """How many present students' own faces score within ``NEAR_THRESHOLD`` of the threshold for them: the
    students a small change of embedder or threshold decides."""
    column = {name: student for student, name in enumerate(names)}
    count = 0
    for face, box in enumerate(marks.detections.boxes.tolist()):
        owner = _owner(box, regions)
        name = who[owner] if owner is not None else None
        if name in present and abs(float(marks.scores[face, column[name]]) - threshold) < NEAR_THRESHOLD:
            count += 1
    return count


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
                 rng: np.random.Generator) -> tuple[dict[str, Path], set[str]]:
    """Enrol ``demo["students"]`` people taken in turn from ``candidates`` (names), each from ``enroll_photos``
    photos that pass the quality checks; a rejected photo is retaken with the person's next photo, a person with no
    usable photo left is replaced by the next candidate. Each person's class photo is drawn first (one of their photos
    after the first ``enroll_photos``) and never enrolled. (class photo of each enrolled student, everyone tried)"""
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
        folder = roster / str(attempt)
        for name in pending:
            others = [photo for photo in people[name] if photo != class_photo[name]]
            shown[name] = min(len(others), shown[name] + wanted - accepted[name])
            (folder / name).mkdir(parents=True)
            for photo in others[:shown[name]]:
                (folder / name / photo.name).symlink_to(photo)
        result = service.enroll(class_name, folder)
        for name in pending:
            accepted[name] = result.enrolled.get(name, 0)


def _owner(detection_box, regions: list[list[float]]) -> int | None:
    """Index of the pasted photo holding the detection's centre."""
    cx, cy = (detection_box[0] + detection_box[2]) / 2, (detection_box[1] + detection_box[3]) / 2
    for index, (x1, y1, x2, y2) in enumerate(regions):
        if x1 <= cx <= x2 and y1 <= cy <= y2:
            return index
    return None


def _class_errors(index: int, present: list[str], absent: list[str], who: list[str | None],
                  marked: dict[str, int | None], marks, names: list[str], threshold: float) -> list[dict]:
    """Each wrong outcome of one demo class, with the scores that explain it: a present student not marked (their
    best face score), a student marked on someone else's face (an absent student, a stranger or a classmate)."""
    column = {name: student for student, name in enumerate(names)}
    errors = []
    for name in present:
        if marked.get(name) is None or who[marked[name]] != name:
            best = float(marks.scores[:, column[name]].max()) if len(marks.scores) else None
            errors.append({"class": index, "kind": "present student not marked", "student": name,
                           "best_score": None if best is None else round(best, 4), "threshold": round(threshold, 4)})
    for name, owner in marked.items():
        if owner is not None and who[owner] == name:
            continue
        kind = ("absent student marked" if name in absent else "stranger marked as a student"
                if owner is not None and who[owner] is None else "marked on another face")
        face = next(face for face, student in marks.pairs if names[student] == name)
        errors.append({"class": index, "kind": kind, "student": name, "face_of": None if owner is None else who[owner],
                       "score": round(float(marks.scores[face, column[name]]), 4), "threshold": round(threshold, 4)})
    return errors


def run_demo(cfg: dict, lfw_root: str | None, classes: int | None, out: Path, verbose: bool = False) -> dict:

    demo = cfg["demo"]
    classes = classes or demo["classes"]
    if demo["present"] > demo["students"]:
        raise ConfigError(f"demo.present ({demo['present']}) cannot exceed demo.students ({demo['students']})")
    image_dir = find_lfw(lfw_root or demo["lfw_root"])
    people = people_with_photos(image_dir, demo["folds"])
    eligible = [name for name, photos in people.items() if len(photos) > demo["enroll_photos"]]
    if len(eligible) < demo["students"]:
        raise ConfigError(f"{image_dir}: only {len(eligible)} people have more than {demo['enroll_photos']} photos")
    rng = np.random.default_rng(demo["seed"])
    out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="attendance_demo_"))
    totals = {"marks": 0, "present": 0, "present_marked": 0, "present_near_threshold": 0, "absent": 0,
              "absent_marked": 0, "strangers": 0, "strangers_marked": 0, "seconds_mark": 0.0}
    errors: list[dict] = []
    service = AttendanceService(cfg, db_path=workdir / "demo.sqlite", verbose=verbose)
    try:
        for index in tqdm(range(classes), desc="classes", unit="class"):
            class_name = f"demo{index}"
            class_photos, tried = enroll_class(service, class_name, iter(rng.permutation(eligible).tolist()), people,
                                               demo, workdir / f"roster{index}", rng)
            enrolled = sorted(class_photos)
            others = [name for name in people if name not in tried]
            strangers = [str(s) for s in rng.choice(others, demo["strangers"], replace=False)]
            present = [str(s) for s in rng.choice(enrolled, demo["present"], replace=False)]
            photos = [class_photos[name] for name in present]
            photos += [people[name][int(rng.integers(0, len(people[name])))] for name in strangers]
            who = present + [None] * len(strangers)
            canvas, regions = compose_class_photo(photos, tuple(demo["canvas"]), rng)
            start = time.perf_counter()
            gallery, threshold, _, [marks] = service.match_photos(class_name, [(f"class{index}.jpg", canvas)])
            totals["seconds_mark"] += time.perf_counter() - start
            marked = {gallery.names[student]: _owner(marks.detections.boxes[face].tolist(), regions)
                      for face, student in marks.pairs}
            totals["marks"] += len(marked)
            totals["present"] += len(present)
            totals["present_marked"] += sum(1 for name in present
                                            if marked.get(name) is not None and who[marked[name]] == name)
            absent = [name for name in enrolled if name not in present]
            totals["absent"] += len(absent)
            totals["absent_marked"] += sum(1 for name in absent if name in marked)
            totals["strangers"] += len(strangers)
            totals["strangers_marked"] += sum(1 for owner in marked.values()
                                              if owner is not None and who[owner] is None)
            totals["present_near_threshold"] += near_threshold(present, who, marks, gallery.names, threshold,
                                                               regions)
            errors.extend(_class_errors(index, present, absent, who, marked, marks, gallery.names, threshold))
            if index == 0:
                cv2.imwrite(str(out / "class0_annotated.jpg"), annotate(canvas, marks, gallery.names))
    finally:
        service.close()
        shutil.rmtree(workdir, ignore_errors=True)
    figures = {"classes": classes, "folds": demo["folds"] or "all", "students_per_class": demo["students"], "present_per_class": demo["present"],
               "strangers_per_class": demo["strangers"],
               "precision": round(totals["present_marked"] / max(totals["marks"], 1), 4),
               "present_marked_rate": round(totals["present_marked"] / totals["present"], 4),
               "absent_marked_rate": round(totals["absent_marked"] / max(totals["absent"], 1), 4),
               "strangers_marked_rate": round(totals["strangers_marked"] / max(totals["strangers"], 1), 4),
               "seconds_per_class_photo": round(totals["seconds_mark"] / classes, 2), **totals, "errors": errors}
    (out / "demo.json").write_text(json.dumps(figures, indent=2), encoding="utf-8")
    print(f"{classes} classes of {demo['students']} enrolled, {demo['present']} present, {demo['strangers']} "
          f"strangers: precision {figures['precision']:.1%} (marks of the right student), recall "
          f"{figures['present_marked_rate']:.1%} (present students marked), absent students marked "
          f"present {figures['absent_marked_rate']:.1%}, strangers marked as students "
          f"{figures['strangers_marked_rate']:.1%}; {figures['seconds_per_class_photo']} s per class photo → "
          f"{out / 'demo.json'}")
    return figures
