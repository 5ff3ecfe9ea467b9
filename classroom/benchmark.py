"""``evaluate.py --benchmark classroom``: attendance on generated photos of a class as a phone takes them.

Per class (settings: the ``benchmark`` section of the attendance config):

- ``students`` people with ``min_photos`` or more photos are enrolled, each from up to ``enroll_photos`` of their
  photos other than the class photo (the service's own checks; a student none of whose photos passes stays
  unenrolled, and is a miss when present);
- another photo of ``present`` of them and one photo each of ``strangers`` people not enrolled are seated in rows
  of ``seats_per_row``: row ``r``'s faces are ``row_face_px[r]`` px wide (back row first, ±10 %) at the first photo
  size, rows further back are narrower and higher, front rows cover the shoulders of the row behind; each
  head-and-shoulders crop is blended onto a wall with a feathered edge;
- the photo is lit unevenly (a brightness ramp, gamma, a colour cast), slightly blurred, given sensor noise and
  JPEG-coded, as a phone would; the same photo is scored at every size of ``photo_sizes`` (shrunk by area).

Splits: ``report`` draws only the people of LFW fold 10 (``people.txt``), seeds from ``REPORT_SEED`` (1000); ``tune``
draws the people of folds 1-9, seeds from 0. Nothing is tuned on the report split.

Per photo size: present students marked on their own face (recall), absent students and strangers marked, every
wrong mark, each with its 95 % interval; recall and detection per face-size bin (the face's width in the photo);
seconds per photo. ``reference="face_recognition"`` scores face_recognition's recipe (HOG with one upsampling,
its 128-d encodings, the nearest enrolled face at distance <= 0.6) on the same photos.
"""
from __future__ import annotations

import itertools
import json
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import ImageFile
from tqdm import tqdm

from classroom.demo import enroll_round, find_lfw, people_with_photos
from classroom.service import AttendanceService
from common.boxes import box_iou
from common.composite import NOMINAL_FACE, paste_portraits, phone_effects, seat_layout, wall
from common.config import ConfigError
from common.io import at_size
from common.lfw import split_folds, split_seed
from common.metrics import size_bin as metrics_size_bin
from common.metrics import size_bin_labels
from common.stats import rate_figure

SIZE_BINS = (0, 16, 24, 32, 48, 64, 96)  # face width bins (px): <16, 16-24, ..., >=96
SEAT_SPACING = 3.6   # seat centres apart, in face widths of the row (people ~0.6 m apart, faces ~0.16 m wide)
ROW_SPREAD = 1.8     # vertical distance between rows, relative to the least that keeps faces uncovered
OWNER_IOU = 0.3      # a detection is the face of the seat whose face box it overlaps this much
REFERENCE_TOLERANCE = 0.6  # face_recognition's default distance for a match


@dataclass
class Seat:
    person: str
    enrolled: bool       # a student on the class's roster (False: a stranger)
    box: np.ndarray      # (4,) xyxy face box at the first photo size


@dataclass
class ClassPhoto:
    image: np.ndarray    # (H, W, 3) uint8 RGB before the phone's JPEG, at the first photo size
    seats: list[Seat]


def size_bin(width: float) -> str:
    return metrics_size_bin(width, SIZE_BINS)


def compose(photos: list[tuple[str, bool, Path]], face_boxes: list[np.ndarray], settings: dict,
            rng: np.random.Generator) -> ClassPhoto:
    """The class photo of ``photos`` ((person, enrolled, LFW photo), seated in that order, back row first) whose
    faces are at ``face_boxes`` (xyxy in the 250-px photo), before the phone's effects."""
    width, height = settings["photo_sizes"][0]
    layout = seat_layout(settings["row_face_px"], settings["seats_per_row"], width, height, rng, SEAT_SPACING,
                         ROW_SPREAD)
    if len(photos) > len(layout):
        raise ConfigError(f"{len(photos)} people do not fit {len(layout)} seats")
    canvas = wall(width, height, rng).astype(np.float32)
    placed = paste_portraits(canvas, [path for _, _, path in photos], face_boxes, layout)
    seats = [Seat(photos[index][0], photos[index][1], box) for index, box in placed]
    return ClassPhoto(np.clip(canvas, 0, 255).astype(np.uint8), seats)


def face_owners(detected_boxes: np.ndarray, seat_boxes: np.ndarray) -> list[int | None]:
    """Per detection: the seat whose face box it overlaps most (IoU >= ``OWNER_IOU``), else None."""
    if len(detected_boxes) == 0 or len(seat_boxes) == 0:
        return [None] * len(detected_boxes)
    overlap = box_iou(torch.as_tensor(detected_boxes, dtype=torch.float32),
                      torch.as_tensor(seat_boxes, dtype=torch.float32))  # (D, S)
    best, seat = overlap.max(1)
    return [int(s) if float(b) >= OWNER_IOU else None for b, s in zip(best, seat)]


def photo_outcome(seats: list[Seat], seat_boxes: np.ndarray, detected_boxes: np.ndarray,
                  marks: dict[str, int], absent: list[str], enrolled: set[str], too_small: frozenset = frozenset()
                  ) -> Counter:
    """Counts of one photo: ``marks`` maps each marked student to the detection they were marked on; ``enrolled``:
    the students whose photos passed enrolment (the others cannot be marked); ``too_small``: the detections the
    report flags as too small to identify (a missed student there was told to the teacher)."""
    owners = face_owners(detected_boxes, seat_boxes)
    found = {owner for owner in owners if owner is not None}
    flagged = {owner for face, owner in enumerate(owners) if face in too_small}
    counts = Counter()
    for index, seat in enumerate(seats):
        if not seat.enrolled:
            continue
        size = size_bin(float(seat_boxes[index, 2] - seat_boxes[index, 0]))
        face = marks.get(seat.person)
        right = face is not None and owners[face] == index
        counts.update({"present": 1, "present_marked": right, "present_not_enrolled": seat.person not in enrolled,
                       "missed_flagged_too_small": not right and index in flagged,
                       f"present {size}": 1, f"marked {size}": right, f"found {size}": index in found})
    counts["absent"] = len(absent)
    counts["strangers"] = sum(1 for seat in seats if not seat.enrolled)
    for student, face in marks.items():
        owner = owners[face]
        counts["absent_marked"] += student in absent
        counts["strangers_marked"] += owner is not None and not seats[owner].enrolled
        counts["wrong_marks"] += owner is None or seats[owner].person != student
    return counts


def size_figures(counts: Counter) -> list[dict]:
    figures = []
    for low, high in list(zip(SIZE_BINS, SIZE_BINS[1:])) + [(SIZE_BINS[-1], None)]:
        size = f"{low}-{high}" if high else f">={low}"
        if counts[f"present {size}"]:
            figures.append({"face_px": size, "present": counts[f"present {size}"],
                            "found": counts[f"found {size}"],
                            "recall": rate_figure(counts[f"marked {size}"], counts[f"present {size}"])})
    return figures


def summary(counts: Counter, seconds: float, photos: int) -> dict:
    return {"recall": rate_figure(counts["present_marked"], counts["present"]),
            "present_not_enrolled": counts["present_not_enrolled"],  # none of their photos passed enrolment
            # misses on a face the report flags as too small to identify: the teacher is asked for a closer photo
            "missed_flagged_too_small": counts["missed_flagged_too_small"],
            "absent_marked": rate_figure(counts["absent_marked"], counts["absent"]),
            "strangers_marked": rate_figure(counts["strangers_marked"], counts["strangers"]),
            "wrong_marks": rate_figure(counts["wrong_marks"], counts["absent"] + counts["strangers"]),
            "by_face_px": size_figures(counts), "seconds_per_photo": round(seconds / max(photos, 1), 2)}


class FaceRecognitionRecipe:
    """face_recognition's 20-line recipe: HOG faces (one upsampling), encodings, nearest enrolled face <= 0.6."""

    def __init__(self):
        truncated_images = ImageFile.LOAD_TRUNCATED_IMAGES
        try:
            import face_recognition
        except ImportError:
            raise ConfigError("--reference face_recognition needs the face_recognition package: pip install "
                              "--no-deps face_recognition (beside dlib-bin and face_recognition_models)") from None
        finally:  # its import makes Pillow accept truncated files, process-wide; our reader must keep refusing them
            ImageFile.LOAD_TRUNCATED_IMAGES = truncated_images
        self.api = face_recognition
        self.encodings: list[np.ndarray] = []
        self.owners: list[str] = []

    def enroll(self, person: str, photos: list[Path]) -> None:
        for photo in photos:
            image = self.api.load_image_file(str(photo))
            found = self.api.face_encodings(image)
            if found:
                self.encodings.append(found[0])
                self.owners.append(person)

    def mark(self, image: np.ndarray) -> tuple[np.ndarray, dict[str, int]]:
        """((F, 4) xyxy face boxes, {student: face}): each face marks its nearest enrolled student within 0.6."""
        locations = self.api.face_locations(image, number_of_times_to_upsample=1, model="hog")
        boxes = np.array([[left, top, right, bottom] for top, right, bottom, left in locations], np.float32)
        marks: dict[str, int] = {}
        if locations and self.encodings:
            for face, encoding in enumerate(self.api.face_encodings(image, locations)):
                distances = self.api.face_distance(self.encodings, encoding)
                nearest = int(np.argmin(distances))
                if distances[nearest] <= REFERENCE_TOLERANCE:
                    marks.setdefault(self.owners[nearest], face)
        return boxes.reshape(-1, 4), marks


def enroll_roster(service: AttendanceService, class_name: str, roster: Path, chosen: list[str],
                  class_photo: dict[str, Path], people: dict[str, list[Path]], eligible: list[str],
                  strangers: list[str], wanted: int, rng: np.random.Generator) -> dict[str, str]:
    """Enrol ``chosen`` (changed in place) as a school does: each student from ``wanted`` photos other than their
    class photo; a rejected photo is retaken with the student's next photo, and a student none of whose photos
    passes is replaced by another of ``eligible`` (drawn with ``rng``, so the class's other draws stay as they are;
    in a school the teacher, warned, would retake the photo). (replaced student → replacement)"""
    shown = dict.fromkeys(chosen, 0)  # how many of each student's other photos the roster has shown
    accepted = dict.fromkeys(chosen, 0)
    replaced: dict[str, str] = {}
    tried = set(chosen) | set(strangers)
    for attempt in itertools.count():
        for name in [name for name in chosen if not accepted[name] and shown[name] >= len(people[name]) - 1]:
            new = str(rng.choice([person for person in eligible if person not in tried]))
            tried.add(new)
            chosen[chosen.index(name)] = new
            replaced[next((first for first, now in replaced.items() if now == name), name)] = new
            class_photo[new] = people[new][int(rng.integers(len(people[new])))]
            shown[new] = accepted[new] = 0
        pending = [name for name in chosen if accepted[name] < wanted and shown[name] < len(people[name]) - 1]
        if not pending:
            return replaced
        enroll_round(service, class_name, roster / str(attempt), pending, people, class_photo, shown, accepted,
                     wanted)


def central_face_box(service: AttendanceService, path: Path) -> np.ndarray:
    """(4,) xyxy of the enrolment detector's face nearest the centre of an LFW photo (the nominal box without)."""
    image = cv2.imread(str(path))[:, :, ::-1]
    found = service.pipeline("enroll").detect(np.ascontiguousarray(image))
    face = found.nearest_to_centre(*image.shape[:2])
    return np.array(NOMINAL_FACE, np.float32) if face is None else found.boxes[face].numpy()


def run_classroom_benchmark(cfg: dict, split: str | None = None, classes: int | None = None,
                            reference: str | None = None, out: str | Path | None = None,
                            plot: str | Path | None = None, verbose: bool = False) -> dict:
    settings = cfg["benchmark"]
    split = split or settings["split"]
    folds = split_folds(split, "benchmark.split")
    classes = classes or settings["classes"]
    if settings["present"] > settings["students"]:
        raise ConfigError(f"benchmark.present ({settings['present']}) exceeds benchmark.students")
    people = people_with_photos(find_lfw(cfg["demo"]["lfw_root"]), folds)
    eligible = sorted(name for name, photos in people.items() if len(photos) >= settings["min_photos"])
    if len(eligible) < settings["students"]:
        raise ConfigError(f"only {len(eligible)} people of LFW folds {folds} have "
                          f"{settings['min_photos']} photos or more; benchmark.students is {settings['students']}")
    first_seed = split_seed(split, settings["seed"])
    sizes = [tuple(size) for size in settings["photo_sizes"]]
    scale = [size[0] / sizes[0][0] for size in sizes]
    workdir = Path(tempfile.mkdtemp(prefix="classroom_benchmark_"))
    service = AttendanceService(cfg, db_path=workdir / "benchmark.sqlite", verbose=verbose)
    replacements, reliable_px = 0, cfg["matching"]["reliable_face_px"]
    ours = {size: Counter() for size in sizes}
    theirs = {size: Counter() for size in sizes}
    seconds = Counter()
    try:
        for index in tqdm(range(classes), desc="classes", unit="class"):
            rng = np.random.default_rng(first_seed + index)
            chosen = rng.choice(eligible, settings["students"], replace=False).tolist()
            others = [name for name in people if name not in chosen]
            strangers = rng.choice(others, settings["strangers"], replace=False).tolist()
            present = rng.choice(chosen, settings["present"], replace=False).tolist()
            absent = [name for name in chosen if name not in present]
            class_photo = {name: people[name][int(rng.integers(len(people[name])))] for name in chosen}
            replaced = enroll_roster(service, f"class{index}", workdir / f"roster{index}", chosen, class_photo,
                                     people, eligible, strangers, settings["enroll_photos"],
                                     np.random.default_rng([first_seed + index, 1]))
            replacements += len(replaced)
            for old_name, new_name in replaced.items():
                present = [new_name if name == old_name else name for name in present]
                absent = [new_name if name == old_name else name for name in absent]
            recipe = FaceRecognitionRecipe() if reference else None
            for name in chosen if recipe else ():
                recipe.enroll(name, [photo for photo in people[name] if photo != class_photo[name]]
                              [:settings["enroll_photos"]])
            seated = [(name, True, class_photo[name]) for name in present]
            seated += [(name, False, people[name][int(rng.integers(len(people[name])))]) for name in strangers]
            seated = [seated[i] for i in rng.permutation(len(seated))]
            boxes = [central_face_box(service, path) for _, _, path in seated]
            photo = compose(seated, boxes, settings, rng)
            image = phone_effects(photo.image, rng)
            quality = int(rng.integers(80, 93))
            for size, factor in zip(sizes, scale):
                shot = at_size(image, size, quality)
                seat_boxes = np.stack([seat.box for seat in photo.seats]) * factor
                start = time.perf_counter()
                gallery, _, [marks] = service.match_photos(f"class{index}", [(f"class{index}.jpg", shot)])
                seconds[size] += time.perf_counter() - start
                marked = {gallery.names[student]: face for face, student in marks.pairs}
                too_small = frozenset(face for face in marks.unknown if marks.face_px[face] < reliable_px)
                ours[size].update(photo_outcome(photo.seats, seat_boxes, marks.detections.boxes.numpy(), marked,
                                                absent, set(gallery.names), too_small))
                if recipe:
                    start = time.perf_counter()
                    found, marked = recipe.mark(shot)
                    seconds[("reference", size)] += time.perf_counter() - start
                    theirs[size].update(photo_outcome(photo.seats, seat_boxes, found, marked, absent,
                                                      set(recipe.owners)))
    finally:
        service.close()
        shutil.rmtree(workdir, ignore_errors=True)
    report = {"benchmark": "classroom", "split": split, "classes": classes, "first_seed": first_seed,
              "people": f"LFW folds {folds}", "settings": settings, "pipeline": cfg["pipeline"],
              "students_replaced": replacements,
              "sizes": {f"{w}x{h}": {"ours": summary(ours[(w, h)], seconds[(w, h)], classes),
                                     **({"face_recognition": summary(theirs[(w, h)], seconds[("reference", (w, h))],
                                                                     classes)} if reference else {})}
                        for w, h in sizes}}
    print_report(report)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(report, indent=1), encoding="utf-8")
        print(f"report: {out}")
    plot = Path(plot) if plot else (Path(out).with_suffix(".png") if out else None)
    if plot:
        plot_recall_by_size(report, plot)
        print(f"recall by face size: {plot}")
    return report


def _rate(figure: dict) -> str:
    low, high = figure["ci95"]
    return f"{figure['rate']:.1%} ({figure['k']}/{figure['n']}, {low:.1%}-{high:.1%})"


def print_report(report: dict) -> None:
    print(f"classroom benchmark, {report['split']} split ({report['people']}), {report['classes']} classes")
    for size, methods in report["sizes"].items():
        for method, figures in methods.items():
            print(f"  {size} {method}: recall {_rate(figures['recall'])} ({figures['present_not_enrolled']} present "
                  f"students not enrolled: no photo passed; {figures['missed_flagged_too_small']} missed on a face "
                  "flagged too small); absent marked "
                  f"{_rate(figures['absent_marked'])}; strangers marked {_rate(figures['strangers_marked'])}; "
                  f"wrong marks {_rate(figures['wrong_marks'])}; {figures['seconds_per_photo']} s per photo")
            print("    by face width: " + "; ".join(
                f"{row['face_px']} px {row['recall']['k']}/{row['present']} marked ({row['found']} found)"
                for row in figures["by_face_px"]))


def plot_recall_by_size(report: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    labels = size_bin_labels(SIZE_BINS)
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for size, methods in report["sizes"].items():
        for method, figures in methods.items():
            rows = figures["by_face_px"]
            rates = np.array([row["recall"]["rate"] for row in rows])
            errors = np.abs(np.array([row["recall"]["ci95"] for row in rows]).T - rates)  # (2, bins)
            axis.errorbar([labels.index(row["face_px"]) for row in rows], rates, yerr=errors, marker="o",
                          capsize=3, label=f"{method}, {size}")
    axis.set_xticks(range(len(labels)), labels)
    axis.set_xlabel("face width in the photo (px)")
    axis.set_ylabel("present students marked")
    axis.set_ylim(0, 1.02)
    axis.grid(alpha=0.3)
    axis.legend()
    axis.set_title(f"classroom benchmark, {report['split']} split, {report['classes']} classes")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
