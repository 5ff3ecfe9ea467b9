"""Choose attendance's embedder and its matching settings on demo classes of the people of LFW folds 1-9 (fold 10
is the report set: refused here).

    python -m classroom.tuning --embedders dlib_resnet omz0095 sface --classes 150 [--write]

One demo run (``classroom.demo``) with the fusion of every given embedder, equal weights, enrols and matches each
class once. A fused embedding holds each member's own embedding, scaled (``embedding.fusion``), so every candidate —
each embedder alone and each fusion of two or more, averaged — is replayed on the same faces and enrolment photos
with the service's own rules (``calibrate_thresholds``, ``student_scores``, ``assign``) over a grid of
``target_far``, ``floor`` and ``min_margin``. Floors and margins are cosines, whose spread differs between
embedders, so their grid is drawn from each candidate's own impostor scores on these classes.

Per candidate the setting kept is the one with the highest recall whose false marks (absent students and strangers
marked present) stay within ``--max-false-rate`` on these classes (ties: fewer false marks, the higher floor, the
larger ``target_far``). The candidate with the best recall is the one to name in ``configs/pipeline.yaml``. ``--write``
stores every candidate's setting in ``configs/attendance_matching.yaml``, where the service reads the setting of
whichever embedder the pipeline uses.
"""
from __future__ import annotations

import argparse
import itertools
import json
import pickle
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import yaml
from tqdm import tqdm

from classroom.database import Gallery
from classroom.demo import DemoClass, class_outcome, demo_classes, find_lfw, people_with_photos, rates
from classroom.service import (MATCHING_FILE, MATCHING_SETTINGS, AttendanceService, attendance_config,
                               default_attendance_config)
from common.cli import run_cli
from common.config import ConfigError, project_path
from common.detections import face_widths
from common.lfw import split_folds, split_seed
from matching.identification import assign, calibrate_thresholds, impostor_scores, student_scores
from pipeline import pipeline_config
from pipeline.build import SEPARATOR

TUNE = "tune"
TARGET_FARS = (1e-3, 5e-4, 2e-4, 1e-4, 5e-5, 2e-5, 1e-5, 5e-6)
# of the candidate's impostor scores pooled over the classes; None: no floor
FLOOR_QUANTILES = (None, 0.999, 0.9995, 0.9999, 0.99995, 0.99999)
MARGIN_STDS = (0.0, 0.1, 0.2, 0.35, 0.5)  # min_margin in standard deviations of those impostor scores
NO_FLOOR = -1.0
HEADER = """\
# Attendance's matching settings per embedder (classroom.service reads the entry of the pipeline's embedder;
# a number set in the attendance config's matching section wins). Written by python -m classroom.tuning --write,
# which chooses them on attendance demo classes of the people of LFW folds 1-9 and never reads fold 10.
"""


def member_slices(embedder) -> list[tuple[str, slice, float]]:
    """(member name, its columns in the fused embedding, its share) of a ``FusedEmbedder``."""
    slices, start = [], 0
    for member, share in zip(embedder.members, embedder.shares):
        slices.append((member.name, slice(start, start + member.dim), share))
        start += member.dim
    return slices


def candidate_vectors(fused: np.ndarray, slices, members: tuple[str, ...]) -> np.ndarray:
    """(N, D') the embeddings ``members`` fused with equal weights, cut from (N, D) fusions of every member."""
    parts = [fused[:, columns] / np.sqrt(share) for name, columns, share in slices if name in members]
    return np.concatenate(parts, axis=1) / np.sqrt(len(parts))  # (N, sum of the members' D)


def collect(cfg: dict, embedders: list[str], classes: int, cache: Path | None) -> tuple[list[DemoClass], list]:
    """The demo classes run once with the fusion of ``embedders`` (their photos and chips dropped, the faces'
    fused embeddings kept), or read from ``cache`` when it holds this run."""
    fusion = SEPARATOR.join(embedders)
    key = {"fusion": fusion, "classes": classes, "demo": cfg["demo"], "pipeline": cfg["pipeline"],
           "enroll_set": cfg["enroll_set"], "mark_set": cfg["mark_set"], "quality": cfg["quality"]}
    if cache is not None and cache.is_file():
        with cache.open("rb") as handle:
            stored = pickle.load(handle)
        if stored["key"] == key:
            print(f"demo classes read from {cache}")
            return stored["classes"], stored["slices"]
    # any matching settings do: the run keeps every face's scores, and the rules are replayed on them; the demo's
    # faces are all full size, so no small-face copies are embedded
    run_cfg = {**cfg, "enroll_set": [*cfg["enroll_set"], f"embedding.embedder={fusion}"],
               "mark_set": [*cfg["mark_set"], f"embedding.embedder={fusion}"],
               "matching": {**cfg["matching"], "target_far": max(TARGET_FARS), "floor": NO_FLOOR, "min_margin": 0.0,
                            "calibrate_face_px": []}}
    people = people_with_photos(find_lfw(cfg["demo"]["lfw_root"]), split_folds(cfg["demo"]["split"], "demo.split"))
    workdir = Path(tempfile.mkdtemp(prefix="attendance_tuning_"))
    service = AttendanceService(run_cfg, db_path=workdir / "tuning.sqlite")
    collected = []
    try:
        slices = member_slices(service.pipeline("mark").embedder)
        for demo_class in tqdm(demo_classes(service, cfg["demo"], people, classes, workdir), total=classes,
                               desc="demo classes", unit="class"):
            demo_class.canvas = demo_class.marks.chips = None
            collected.append(demo_class)
    finally:
        service.close()
        shutil.rmtree(workdir, ignore_errors=True)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        with cache.open("wb") as handle:
            pickle.dump({"key": key, "classes": collected, "slices": slices}, handle)
    return collected, slices


def replay(collected: list[DemoClass], slices, members: tuple[str, ...], tail: str) -> list[dict]:
    """Each grid setting's summed counts over the classes, for the candidate fusing ``members``."""
    galleries = [Gallery(demo_class.gallery.class_id, demo_class.gallery.names,
                         candidate_vectors(demo_class.gallery.vectors, slices, members), demo_class.gallery.owners,
                         demo_class.gallery.photos) for demo_class in collected]
    impostors = np.concatenate([impostor_scores(gallery.vectors, gallery.owners) for gallery in galleries])
    floors = [NO_FLOOR] + [float(np.quantile(impostors, q)) for q in FLOOR_QUANTILES if q is not None]
    margins = [float(k * impostors.std()) for k in MARGIN_STDS]
    totals = {setting: Counter() for setting in itertools.product(TARGET_FARS, floors, margins)}
    for demo_class, gallery in zip(collected, galleries):
        scores = student_scores(candidate_vectors(demo_class.marks.embeddings, slices, members), gallery)
        widths = face_widths(demo_class.marks.detections.landmarks)  # (F,)
        for target_far, floor in itertools.product(TARGET_FARS, floors):
            threshold = calibrate_thresholds(gallery.vectors, gallery.owners, len(gallery.names), {}, target_far,
                                             floor, tail).for_faces(widths)  # (F, S)
            for margin in margins:
                counts, _ = class_outcome(demo_class, scores, assign(scores, threshold, margin), threshold)
                totals[(target_far, floor, margin)].update(counts)
    return [{"target_far": target_far, "floor": round(floor, 4), "min_margin": round(margin, 4), **counts,
             **rates(counts)} for (target_far, floor, margin), counts in totals.items()]


def false_marks(row: dict) -> int:
    return row["absent_marked"] + row["strangers_marked"]


def best_setting(rows: list[dict], max_false_rate: float) -> dict:
    """The highest-recall row within ``max_false_rate`` false marks per absent student or stranger (ties: fewer
    false marks, then the higher floor, which guards small classes whose few impostor pairs say little, then the
    larger target_far, the less extrapolated tail); the fewest false marks when none is within it."""
    allowed = [row for row in rows if false_marks(row) <= max_false_rate * (row["absent"] + row["strangers"])]
    if not allowed:
        return min(rows, key=lambda row: (false_marks(row), -row["present_marked"]))
    return max(allowed, key=lambda row: (row["present_marked"], -false_marks(row), row["floor"], row["target_far"]))


MEASURED = ("present_marked", "present", "absent_marked", "absent", "strangers_marked", "strangers",
            "present_near_threshold")


def write_settings(chosen: dict[str, dict], source: str, path: Path) -> None:
    """Each candidate's chosen settings, with what they measured on the tuning classes (``measured``)."""
    settings = {name: {**{key: row[key] for key in MATCHING_SETTINGS},
                       "measured": {key: int(row[key]) for key in MEASURED}} for name, row in chosen.items()}
    path.write_text(HEADER + f"# {source}\n" + yaml.safe_dump({"embedders": settings}, sort_keys=True),
                    encoding="utf-8")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--embedders", nargs="+", required=True, help="two or more registered embedders")
    parser.add_argument("--classes", type=int, default=150, help="demo classes to run")
    parser.add_argument("--config", type=Path, help="attendance YAML (default: configs/attendance.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    parser.add_argument("--max-false-rate", type=float, default=0.005,
                        help="false marks allowed per absent student or stranger on these classes")
    parser.add_argument("--out", type=Path, default=Path("runs/attendance_tuning"),
                        help="folder for tuning.json and the classes' cache (embeddings of LFW people)")
    parser.add_argument("--write", action="store_true", help="store each candidate's setting for the service")
    args = parser.parse_args(argv)
    if len(args.embedders) < 2:
        parser.error("--embedders needs two or more names (every subset is a candidate)")
    cfg = attendance_config(args.config or default_attendance_config(), args.set)
    # the demo's classes of the tune split, whatever demo.split says (that is the demo's own default, report)
    if cfg["demo"]["split"] != TUNE and any(item.split("=")[0].strip() == "demo.split" for item in args.set):
        raise ConfigError(f"demo.split {cfg['demo']['split']!r}: the report split's people and seeds are never tuned "
                          f"on; the tuning always draws its classes from the {TUNE} split")
    cfg["demo"]["split"] = TUNE
    folds = split_folds(TUNE)
    collected, slices = collect(cfg, args.embedders, args.classes, args.out / "classes.pkl")
    results = {}
    for size in range(1, len(args.embedders) + 1):
        for members in itertools.combinations(args.embedders, size):
            rows = replay(collected, slices, members, cfg["matching"]["tail"])
            results[SEPARATOR.join(members)] = {"chosen": best_setting(rows, args.max_false_rate), "grid": rows}
    flip = pipeline_config(project_path(cfg["pipeline"]), cfg["mark_set"])["embedding"]["flip"]
    source = (f"chosen on {args.classes} demo classes of LFW folds {folds} (the tune split, seeds from "
              f"{split_seed(TUNE, cfg['demo']['seed'])}, test-time "
              f"flip {'on' if flip else 'off'}), recall highest with false marks <= {args.max_false_rate:g}")
    print(f"{source}:")
    for name, result in sorted(results.items(), key=lambda item: -item[1]["chosen"]["present_marked"]):
        row = result["chosen"]
        print(f"  {name:<28} recall {row['present_marked_rate']:.2%} ({row['present_marked']}/{row['present']}), "
              f"absent marked {row['absent_marked']}/{row['absent']}, strangers marked {row['strangers_marked']}/"
              f"{row['strangers']}, near threshold {row['present_near_threshold']}  (target_far {row['target_far']:g}"
              f", floor {row['floor']:g}, min_margin {row['min_margin']:g})")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "tuning.json").write_text(json.dumps({"source": source, "candidates": results}, indent=1),
                                          encoding="utf-8")
    if args.write:
        write_settings({name: result["chosen"] for name, result in results.items()}, source, MATCHING_FILE)
        print(f"settings of {len(results)} embedders → {MATCHING_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
