"""The verification benchmarks of ``evaluate.py``: ``--benchmark lfw`` (LFW View 2) and ``--benchmark pairs``
(a user's pair CSV): embed every image once (cached), run the 10-fold protocol, print the per-fold table, write
the ROC PNG and the JSON report."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from common.config import PROJECT_ROOT
from common.errors import InputError, UserError
from common.io import read_image
from matching.protocol import (fold_identities, fold_table, lfw_image_dir, limit_pairs, plot_roc,
                               read_lfw_pairs, read_pairs_csv, result_json, run_protocol)
from matching.verifier import build_verifier
from pipeline.build import build_detector, build_embedder, checkpoint_identities, detector_cache_key
from pipeline.embed_images import CHUNK, DEFAULT_CACHE_DIR, embed_images, fallback_box, file_stamp

DEFAULT_LFW_ROOT = PROJECT_ROOT.parent / "shared" / "data" / "lfw"
LFW_PAIRS = "pairs.txt"


class TrainedOnTestFold(UserError, ValueError):
    """The embedder was trained on identities of a fold it would be tested on."""


def check_unseen_identities(weights: str | Path | None, pairs, test_folds, reader=None) -> None:
    """Refuse to test on a fold whose identities the embedder's checkpoint (``weights``) records as trained on."""
    reader = reader or checkpoint_identities
    if weights is None:
        return
    trained = reader(weights)
    if not trained:
        return
    trained = set(trained)
    by_fold = fold_identities(pairs)
    clashes = {fold: sorted(by_fold.get(fold, set()) & trained) for fold in test_folds}
    clashes = {fold: names for fold, names in clashes.items() if names}
    if clashes:
        described = "; ".join(f"fold {fold + 1}: {len(names)} (e.g. {', '.join(names[:3])})"
                              for fold, names in clashes.items())
        clean = [fold + 1 for fold in sorted(by_fold) if not by_fold[fold] & trained]
        raise TrainedOnTestFold(
            f"{weights} was trained on identities of the test fold(s) — {described}. Scoring it there would "
            f"overstate accuracy; choose --folds among the folds it has not seen: {clean or 'none'}")


def lfw_pairs(lfw_root: str | Path | None = None):
    """(LFW View 2 pairs, description); ``lfw_root`` holds pairs.txt and deepfunneled/ or lfw/."""
    root = Path(lfw_root) if lfw_root else DEFAULT_LFW_ROOT
    if not root.is_dir():
        raise FileNotFoundError(f"LFW root not found: {root}; pass --lfw-root (the folder holding pairs.txt "
                                "and deepfunneled/ or lfw/)")
    return read_lfw_pairs(root / LFW_PAIRS, lfw_image_dir(root)), f"LFW View 2 ({root})"


def csv_pairs(pairs_csv: str | Path | None, images: str | Path | None = None):
    """(pairs of a CSV file_x,file_y,same, description); ``images``: the folder its files are relative to."""
    if not pairs_csv:
        raise InputError("--benchmark pairs needs --pairs FILE.csv (header file_x,file_y,same)")
    return read_pairs_csv(pairs_csv, images), f"{pairs_csv}"


PROBE_JPEG_QUALITY = 90  # a phone's JPEG, after the shrink


def shrunk_photo(image: np.ndarray, face_width: float, face_px: int) -> bytes:
    """JPEG bytes of ``image`` (H, W, 3 uint8 RGB) shrunk by area resampling so that a face ``face_width`` px wide
    becomes ``face_px`` px wide, then brought back to its size (bilinear): the face keeps its place and size but only
    ``face_px`` px of detail, as a face at the back of a class photo. Faces already that small are only JPEG-coded."""
    height, width = image.shape[:2]
    scale = face_px / face_width
    if scale < 1:
        small = cv2.resize(image, (max(1, round(width * scale)), max(1, round(height * scale))),
                           interpolation=cv2.INTER_AREA)
        image = cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                               [cv2.IMWRITE_JPEG_QUALITY, PROBE_JPEG_QUALITY])
    if not ok:
        raise RuntimeError("OpenCV could not encode a JPEG")
    return encoded.tobytes()


def shrink_probes(pairs, face_px: int, detector, detector_key: str, cache_dir: str | Path) -> list:
    """``pairs`` with each second photo replaced by its ``shrunk_photo`` copy, its face (the detector's face
    nearest the centre; without one, the fallback box) ``face_px`` px wide. Copies are written once under
    ``cache_dir``/probes/<``detector_key``> and named by the original's path, size and time, so a rerun with the
    same detector (``pipeline.build.detector_cache_key``) reuses them."""
    folder = Path(cache_dir).expanduser() / "probes" / f"{detector_key}-{face_px}px"
    copies = {}
    for path in sorted({pair.path_y for pair in pairs}):
        stamp = hashlib.sha1(file_stamp(Path(path)).encode()).hexdigest()[:12]
        copies[path] = folder / Path(path).parent.name / f"{Path(path).stem}-{stamp}.jpg"
    todo = [path for path, copy in copies.items() if not copy.is_file()]
    for start in tqdm(range(0, len(todo), CHUNK), desc=f"shrinking probes to {face_px} px", unit="batch",
                      disable=not todo):
        paths = todo[start:start + CHUNK]
        images = [read_image(path) for path in paths]
        for path, image, found in zip(paths, images, detector.detect(images)):
            height, width = image.shape[:2]
            face = found.nearest_to_centre(height, width)
            box = found.boxes[face].tolist() if face is not None else fallback_box(height, width)[0].tolist()
            copies[path].parent.mkdir(parents=True, exist_ok=True)
            copies[path].write_bytes(shrunk_photo(image, box[2] - box[0], face_px))
    return [dataclasses.replace(pair, path_y=copies[pair.path_y]) for pair in pairs]


def run_verification_benchmark(pairs, description: str, *, benchmark: str = "lfw", embedder: str = "dlib_resnet",
                               weights: str | None = None, detector: str = "mtcnn", device: str = "cpu",
                               verifier: str = "threshold", metric: str = "cosine", classifier: str = "logistic",
                               jitter: int = 0, flip: bool = False, align: str | None = None,
                               folds: list[int] | None = None, limit: int | None = None,
                               probe_face_px: int | None = None, cache_dir: str | Path | None = None,
                               out: str | Path | None = None, plot: str | Path | None = None) -> dict:
    """Embed every image of ``pairs`` once (cached) with ``embedder`` on ``detector``'s faces, run the 10-fold
    protocol on ``folds`` (1-based; None: all), print the per-fold table, write the ROC PNG (``plot``, default
    next to ``out``) and the JSON report (``out``); returns the report. ``benchmark == "lfw"`` also refuses
    weights trained on people of a test fold. ``probe_face_px``: cross-resolution verification, the second photo
    of every pair shrunk so its face is that many px wide (``shrink_probes``)."""
    started = time.perf_counter()
    folds_present = sorted({pair.fold for pair in pairs})
    test_folds = folds_present if not folds else [fold - 1 for fold in folds]
    unknown = [fold + 1 for fold in test_folds if fold not in folds_present]
    if unknown:
        raise InputError(f"--folds {unknown}: folds are numbered 1..{len(folds_present)}")
    if benchmark == "lfw":
        check_unseen_identities(weights, pairs, test_folds)
    pairs = limit_pairs(pairs, limit)

    if probe_face_px is not None and probe_face_px < 4:
        raise InputError(f"--probe-face-px must be at least 4, got {probe_face_px}")
    face_embedder = build_embedder(embedder, weights, device, flip=flip, align=align)
    face_detector = build_detector(detector, device=device)
    detector_key = detector_cache_key(detector)
    cache_dir = cache_dir or DEFAULT_CACHE_DIR
    if probe_face_px:
        pairs = shrink_probes(pairs, probe_face_px, face_detector, detector_key, cache_dir)
    paths = [pair.path_x for pair in pairs] + [pair.path_y for pair in pairs]
    embedded = embed_images(paths, face_embedder, face_detector, detector_key, jitter=jitter, cache_dir=cache_dir)
    embeddings_x, embeddings_y = np.split(embedded.embeddings, 2)  # (N, D) each
    unique_no_face = {path: missing for path, missing in zip(paths, embedded.no_face)}
    n_no_face = int(sum(unique_no_face.values()))

    def make_verifier():
        return build_verifier(verifier, metric=metric, classifier=classifier)

    same = np.array([pair.same for pair in pairs])
    result = run_protocol(embeddings_x, embeddings_y, same, [pair.fold for pair in pairs], make_verifier,
                          test_folds)
    print(fold_table(result))
    print(f"{len(unique_no_face)} images, {n_no_face} without a detected face (embedded from the central "
          f"fallback crop)")

    out = Path(out) if out else None
    plot = Path(plot) if plot else (out.with_suffix(".roc.png") if out else Path("roc_curve.png"))
    title = (f"{benchmark}: {face_embedder.name}, {verifier}" + (f" ({metric})" if verifier == "threshold" else "")
             + (f", probes {probe_face_px} px" if probe_face_px else ""))
    plot_roc(result, plot, title)
    print(f"ROC curve: {plot}")
    report = result_json(
        result, n_pairs=len(pairs), n_no_face=n_no_face, benchmark=benchmark, data=description,
        embedder=face_embedder.name, embedder_key=face_embedder.cache_key, weights=weights, detector=detector,
        verifier=make_verifier().describe(), jitter=jitter, flip=flip, n_images=len(unique_no_face),
        test_folds=[fold + 1 for fold in test_folds], limit_per_fold=limit, probe_face_px=probe_face_px,
        probe=None if not probe_face_px else (
            f"the second photo of each pair shrunk (area) so its face box is {probe_face_px} px wide, back to its "
            f"size (bilinear), JPEG {PROBE_JPEG_QUALITY}"),
        protocol="10-fold: fit on the other folds, test on each; accuracy mean and sample std over the tested "
                 "folds; AUC and TAR@FAR=1e-3 on their pooled out-of-fold scores",
        images_embedded_now=embedded.computed, seconds=round(time.perf_counter() - started, 1), plot=str(plot))
    if limit:
        print(f"note: --limit {limit} keeps {len(pairs)} of the protocol's pairs; these are not LFW figures")
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2), encoding="utf-8")
        print(f"report: {out}")
    return report
