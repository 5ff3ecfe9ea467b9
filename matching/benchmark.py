"""The verification benchmarks of ``evaluate.py``: ``--benchmark lfw`` (LFW View 2) and ``--benchmark pairs``
(a user's pair CSV): embed every image once (cached), run the 10-fold protocol, print the per-fold table, write
the ROC PNG and the JSON report."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from matching.embed_images import DEFAULT_CACHE_DIR, embed_images
from matching.protocol import (fold_identities, fold_table, lfw_image_dir, limit_pairs, plot_roc,
                               read_lfw_pairs, read_pairs_csv, result_json, run_protocol)
from matching.verifier import build_verifier
from common.errors import InputError, UserError

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_LFW_ROOT = ROOT.parent / "shared" / "data" / "lfw"
LFW_PAIRS = "pairs.txt"


class TrainedOnTestFold(UserError, ValueError):
    """The embedder was trained on identities of a fold it would be tested on."""


def _identity_reader():
    """A function weights path → identities its training run saw, or None for weights that are not a checkpoint
    of our embedding training (published weights); None when ``embedding.training`` is absent."""
    try:
        from embedding.training import training_identities
    except ImportError:
        return None
    from common.checkpoint import CheckpointError

    def read(weights):
        try:
            return training_identities(weights)
        except CheckpointError:
            return None

    return read


def check_unseen_identities(weights: str | Path | None, pairs, test_folds, reader=None) -> None:
    """Refuse to test on a fold whose identities the embedder's checkpoint (``weights``) records as trained on."""
    reader = reader or _identity_reader()
    if weights is None or reader is None:
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


def build_embedder_for(name: str, weights: str | None, device: str, flip: bool = False, align: str | None = None):
    """The embedder ``name`` (registry) with ``weights``; a checkpoint of our embedding training is loaded with
    ``embedding.training.embedder_from_checkpoint`` when it records its training identities. ``flip``: test-time
    flip (each face embedded with its mirror image); ``align``: dlib_resnet's chip alignment (its default if None)."""
    from common.registry import build_embedder
    reader = _identity_reader()
    if weights is not None and reader is not None and reader(weights):
        from embedding.training import embedder_from_checkpoint
        embedder = embedder_from_checkpoint(weights, device)
    else:
        embedder = build_embedder(name, weights=weights, device=device, **({"align": align} if align else {}))
    embedder.flip = flip
    return embedder


def load_pairs(args):
    """(pairs, description) for ``--benchmark lfw`` or ``pairs``."""
    if args.benchmark == "lfw":
        root = Path(args.lfw_root) if args.lfw_root else DEFAULT_LFW_ROOT
        if not root.is_dir():
            raise FileNotFoundError(f"LFW root not found: {root}; pass --lfw-root (the folder holding pairs.txt "
                                    "and deepfunneled/ or lfw/)")
        return read_lfw_pairs(root / LFW_PAIRS, lfw_image_dir(root)), f"LFW View 2 ({root})"
    if not args.pairs:
        raise InputError("--benchmark pairs needs --pairs FILE.csv (header file_x,file_y,same)")
    return read_pairs_csv(args.pairs, args.images), f"{args.pairs}"


def run_verification_benchmark(args) -> dict:
    """Everything ``evaluate.py --benchmark lfw|pairs`` does, from its parsed flags; returns the report."""
    started = time.perf_counter()
    pairs, description = load_pairs(args)
    folds_present = sorted({pair.fold for pair in pairs})
    test_folds = folds_present if not args.folds else [fold - 1 for fold in args.folds]
    unknown = [fold + 1 for fold in test_folds if fold not in folds_present]
    if unknown:
        raise InputError(f"--folds {unknown}: folds are numbered 1..{len(folds_present)}")
    if args.benchmark == "lfw":
        check_unseen_identities(args.weights, pairs, test_folds)
    pairs = limit_pairs(pairs, args.limit)

    from common.registry import build_detector
    embedder = build_embedder_for(args.embedder, args.weights, args.device, flip=args.flip, align=args.align)
    detector = build_detector(args.detector, device=args.device)
    paths = [pair.path_x for pair in pairs] + [pair.path_y for pair in pairs]
    embedded = embed_images(paths, embedder, detector, args.detector, jitter=args.jitter,
                            cache_dir=args.cache_dir or DEFAULT_CACHE_DIR)
    embeddings_x, embeddings_y = np.split(embedded.embeddings, 2)  # (N, D) each
    unique_no_face = {path: missing for path, missing in zip(paths, embedded.no_face)}
    n_no_face = int(sum(unique_no_face.values()))

    def make_verifier():
        return build_verifier(args.verifier, metric=args.metric, classifier=args.classifier)

    same = np.array([pair.same for pair in pairs])
    result = run_protocol(embeddings_x, embeddings_y, same, [pair.fold for pair in pairs], make_verifier,
                          test_folds)
    print(fold_table(result))
    print(f"{len(unique_no_face)} images, {n_no_face} without a detected face (embedded from the central "
          f"fallback crop)")

    out = Path(args.out) if args.out else None
    plot = Path(args.plot) if args.plot else (out.with_suffix(".roc.png") if out else Path("roc_curve.png"))
    title = f"{args.benchmark}: {embedder.name}, {args.verifier}" + (f" ({args.metric})"
                                                                     if args.verifier == "threshold" else "")
    plot_roc(result, plot, title)
    print(f"ROC curve: {plot}")
    report = result_json(
        result, n_pairs=len(pairs), n_no_face=n_no_face, benchmark=args.benchmark, data=description,
        embedder=embedder.name, embedder_key=embedder.cache_key, weights=args.weights, detector=args.detector,
        verifier=make_verifier().describe(), jitter=args.jitter, flip=args.flip, n_images=len(unique_no_face),
        test_folds=[fold + 1 for fold in test_folds], limit_per_fold=args.limit,
        protocol="10-fold: fit on the other folds, test on each; accuracy mean and sample std over the tested "
                 "folds; AUC and TAR@FAR=1e-3 on their pooled out-of-fold scores",
        images_embedded_now=embedded.computed, seconds=round(time.perf_counter() - started, 1), plot=str(plot))
    if args.limit:
        print(f"note: --limit {args.limit} keeps {len(pairs)} of the protocol's pairs; these are not LFW figures")
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2), encoding="utf-8")
        print(f"report: {out}")
    return report

