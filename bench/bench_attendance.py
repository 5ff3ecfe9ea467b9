"""Attendance speed: one 1920×1080 class photo with ~30 faces end to end (detect, align, embed, assign), per
stage, with the configured pipeline (large galleries: ``bench.bench_gallery``).

    python -m bench.bench_attendance [--faces 30] [--threads 2] [--repeats 3] [--set mark_set=[...]]

Goal (issue 7/9): ≤ 1.5 s per 1080p photo of ~30 faces on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.timing import keep_freed_memory_in_heap, report
from matching.identification import assign, student_scores
from classroom.demo import compose_class_photo, people_with_photos
from classroom.service import AttendanceService, attendance_config
from classroom.database import Gallery

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--faces", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--config", default=str(Path(__file__).resolve().parents[1] / "configs" / "attendance.yaml"))
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory_in_heap()

    people = people_with_photos(SHARED / "data/lfw/deepfunneled")
    chosen = [name for name, photos in people.items() if len(photos) >= 2][:args.faces]
    canvas, _ = compose_class_photo([people[name][1] for name in chosen], (1920, 1080), np.random.default_rng(0))
    service = AttendanceService(attendance_config(args.config, args.set),
                                db_path=Path(tempfile.mkdtemp(prefix="bench_attendance_")) / "bench.sqlite")
    pipeline = service.pipeline("mark")
    pipeline.process(canvas[:200, :200].copy())  # warm-up
    best = None
    for _ in range(args.repeats):
        start = time.perf_counter()
        faces = pipeline.process(canvas)
        total = time.perf_counter() - start
        if best is None or total < best[0]:
            best = (total, dict(faces.timings), len(faces.detections))
    total, timings, found = best

    queries = faces.embeddings.numpy()
    start = time.perf_counter()
    # a gallery of the photo's own faces, one student each: assignment of every face found
    gallery = Gallery(0, [str(face) for face in range(len(queries))], queries, np.arange(len(queries)), [])
    assign(student_scores(queries, gallery), 0.9)
    assign_ms = (time.perf_counter() - start) * 1000
    result = {"photo": "1920x1080", "faces_placed": len(chosen), "faces_found": found,
              "seconds_end_to_end": round(total, 3), **{f"seconds_{k}": round(v, 3) for k, v in timings.items()},
              "assignment_ms": round(assign_ms, 3), "threads": args.threads}
    report(result, args.out)


if __name__ == "__main__":
    main()
