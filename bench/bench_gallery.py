"""Gallery scale: the attendance product's own identification functions on galleries of 1,000, 10,000 and 100,000
enrolled people (5 photos each, with the 4 small-face copies of every photo that enrolment stores), for one class
photo's faces: ``student_scores`` (each face's best score per person), ``calibrate_thresholds`` (the thresholds
per face size and person, from a bounded sample of impostor pairs) and ``assign`` (one-to-one marking).

    python -m bench.bench_gallery [--identities 1000 10000 100000] [--faces 30] [--dim 512] [--threads 2]

Milliseconds per face (scoring + assignment, the part that runs per photo) and the peak memory each function
allocates (tracemalloc, on top of the gallery itself, whose size is printed too). Embeddings are random unit
vectors of ``--dim`` values (512: the default fused embedder's): the cost depends on the shapes, not the values.
Goal (issue 22): ≤ 5 ms per face and ≤ 2 GB at 100,000 people on 2 cores.
"""
from __future__ import annotations

import argparse
import time
import tracemalloc
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from bench.timing import report
from classroom.database import Gallery
from classroom.service import ATTENDANCE_DEFAULTS
from matching.identification import assign, calibrate_thresholds, student_scores

PHOTOS_PER_PERSON = 5
MB = 2 ** 20


def unit_vectors(rng: np.random.Generator, count: int, dim: int) -> np.ndarray:
    vectors = rng.standard_normal((count, dim), dtype=np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def measured(function, *args):
    """(result, seconds, peak MB allocated while it ran)."""
    tracemalloc.start()
    start = time.perf_counter()
    result = function(*args)
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1] / MB
    tracemalloc.stop()
    return result, seconds, peak


def gallery_figures(identities: int, faces: int, dim: int, repeats: int) -> dict:
    rng = np.random.default_rng(identities)
    settings = ATTENDANCE_DEFAULTS["matching"]
    photos = identities * PHOTOS_PER_PERSON
    gallery = Gallery(0, [str(i) for i in range(identities)], unit_vectors(rng, photos, dim),
                      np.repeat(np.arange(identities), PHOTOS_PER_PERSON), [],
                      {float(px): unit_vectors(rng, photos, dim) for px in settings["calibrate_face_px"]})
    queries = unit_vectors(rng, faces, dim)
    widths = rng.uniform(16, 100, faces)
    thresholds, calibrate_s, calibrate_mb = measured(
        calibrate_thresholds, gallery.vectors, gallery.owners, identities, gallery.degraded, 1e-4, 0.3, "normal",
        settings["max_impostor_pairs"])
    best_score_s, best_assign_s, score_mb, assign_mb = float("inf"), float("inf"), 0.0, 0.0
    for _ in range(repeats):
        scores, seconds, score_mb = measured(student_scores, queries, gallery)
        best_score_s = min(best_score_s, seconds)
        _, seconds, assign_mb = measured(assign, scores, thresholds.for_faces(widths), 0.05)
        best_assign_s = min(best_assign_s, seconds)
    gallery_mb = (gallery.vectors.nbytes + sum(v.nbytes for v in gallery.degraded.values())) / MB
    return {"photos": photos, "gallery_mb": round(gallery_mb, 1),
            "ms_per_face": round((best_score_s + best_assign_s) * 1000 / faces, 3),
            "score_ms_per_face": round(best_score_s * 1000 / faces, 3),
            "assign_ms_per_face": round(best_assign_s * 1000 / faces, 3),
            "peak_mb_per_photo": round(max(score_mb, assign_mb), 1),
            "calibration_s": round(calibrate_s, 2), "calibration_peak_mb": round(calibrate_mb, 1),
            "impostor_pairs": thresholds.impostor_pairs, "gallery_impostor_pairs": thresholds.gallery_pairs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--identities", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    parser.add_argument("--faces", type=int, default=30, help="faces of one class photo")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    threadpool_limits(args.threads)  # NumPy's BLAS
    galleries = []
    for identities in args.identities:
        galleries.append({"people": identities, **gallery_figures(identities, args.faces, args.dim, args.repeats)})
        print(galleries[-1], flush=True)
    report({"faces": args.faces, "dim": args.dim, "photos_per_person": PHOTOS_PER_PERSON, "threads": args.threads,
            "galleries": galleries}, args.out)


if __name__ == "__main__":
    main()
