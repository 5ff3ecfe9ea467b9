"""Verification benchmarks: LFW's pair and people lists, users' pair CSVs, and the 10-fold protocol.

LFW View 2 (``pairs.txt``): a header "10 300", then per fold 300 same-person lines ``name i j`` and 300
different-person lines ``name1 i name2 j``. The verifier (threshold or classifier) is fitted on 9 folds and tested
on the 10th, for each fold in turn. A user's own pairs get the same protocol over 10 folds drawn by
``sklearn.model_selection.KFold`` with a fixed seed.

Figures: per-fold accuracy (its mean and sample standard deviation over the tested folds), and ROC AUC and
TAR@FAR=1e-3 on the *pooled* out-of-fold scores of the tested folds. Pooling is chosen because one LFW fold holds
300 different pairs, so a per-fold FAR of 1e-3 means "no false accept at all"; pooled over 10 folds, 3000 different
pairs put FAR=1e-3 at 3 false accepts. TAR at exactly FAR=1e-3 is interpolated linearly along the ROC. Per-fold
AUCs are in the table too.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from sklearn.metrics import auc, roc_curve
from sklearn.model_selection import KFold

from common.errors import InputError, UserError

LFW_IMAGE_DIRS = ("deepfunneled", "lfw_funneled", "lfw-deepfunneled", "lfw")  # LFW layouts, preferred first
LFW_FOLDS = 10
TARGET_FAR = 1e-3
KFOLD_SEED = 0
CSV_COLUMNS = ("file_x", "file_y", "same")  # the label column may have any name: deepface's own files say Decision
TRUE_WORDS = frozenset({"1", "yes", "y", "true", "same"})
FALSE_WORDS = frozenset({"0", "no", "n", "false", "different"})


class PairsError(UserError, ValueError):
    """A pair list that cannot be read; the message names the file and line."""


@dataclass(frozen=True)
class Pair:
    """Two image files, whether they show the same person, the protocol fold, and (LFW) the two identities."""

    path_x: Path
    path_y: Path
    same: bool
    fold: int
    identity_x: str | None = None
    identity_y: str | None = None


# ---------------------------------------------------------------------------------------------------------- LFW


def lfw_image_dir(root: str | Path) -> Path:
    """The folder of ``<Name>/<Name>_NNNN.jpg`` under the LFW root: ``deepfunneled/`` (preferred) or the original
    ``lfw/``, or ``root`` itself when it already is such a folder."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"LFW root not found: {root}")
    for name in LFW_IMAGE_DIRS:
        if (root / name).is_dir():
            return root / name
    if any(child.is_dir() and any(child.glob(f"{child.name}_*.jpg")) for child in list(root.iterdir())[:20]):
        return root
    raise FileNotFoundError(f"{root}: no LFW image folder; expected one of {', '.join(LFW_IMAGE_DIRS)} holding "
                            "<Name>/<Name>_NNNN.jpg")


def lfw_image_path(image_dir: Path, name: str, number: int) -> Path:
    return Path(image_dir) / name / f"{name}_{number:04d}.jpg"


def _ints(tokens: Sequence[str], path: Path, line_number: int, what: str) -> list[int]:
    try:
        return [int(token) for token in tokens]
    except ValueError:
        raise PairsError(f"{path}:{line_number}: expected {what}, got {' '.join(tokens)!r}") from None


def read_lfw_pairs(path: str | Path, image_dir: str | Path) -> list[Pair]:
    """Pairs of an LFW pair list. Header "folds n" (View 2: "10 300") or just "n" (pairsDevTrain/DevTest: one
    fold); each fold is n same-person lines then n different-person lines."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LFW pairs file not found: {path}")
    lines = [(number, line.split()) for number, line in
             enumerate(path.read_text(encoding="utf-8").splitlines(), start=1) if line.strip()]
    if not lines:
        raise PairsError(f"{path}: empty; expected a header line '<folds> <pairs per class>' or '<pairs>'")
    header_number, header = lines[0]
    counts = _ints(header, path, header_number, "a header '<folds> <pairs per class>' or '<pairs per class>'")
    if len(counts) not in (1, 2):
        raise PairsError(f"{path}:{header_number}: header must be '<folds> <pairs per class>' or '<pairs per class>'")
    folds, per_class = counts if len(counts) == 2 else (1, counts[0])
    body = lines[1:]
    if len(body) != folds * 2 * per_class:
        raise PairsError(f"{path}: header says {folds} fold(s) of {per_class} same + {per_class} different pairs "
                         f"= {folds * 2 * per_class} lines, but {len(body)} pair lines follow")
    pairs = []
    for index, (number, tokens) in enumerate(body):
        fold, within = divmod(index, 2 * per_class)
        same = within < per_class
        if same:
            if len(tokens) != 3:
                raise PairsError(f"{path}:{number}: fold {fold + 1} same-person line {within + 1} must be "
                                 f"'name i j', got {' '.join(tokens)!r}")
            name_x, (i, j) = tokens[0], _ints(tokens[1:], path, number, "image numbers")
            name_y = name_x
        else:
            if len(tokens) != 4:
                raise PairsError(f"{path}:{number}: fold {fold + 1} different-person line {within - per_class + 1} "
                                 f"must be 'name1 i name2 j', got {' '.join(tokens)!r}")
            name_x, name_y = tokens[0], tokens[2]
            i, j = _ints([tokens[1], tokens[3]], path, number, "image numbers")
        pairs.append(Pair(lfw_image_path(image_dir, name_x, i), lfw_image_path(image_dir, name_y, j), same, fold,
                          name_x, name_y))
    return pairs


def read_lfw_people(path: str | Path) -> list[set[str]]:
    """The identities of each fold of an LFW people list: a fold-count line, then per fold a count line and that
    many "name images" lines (``peopleDevTrain.txt``: one fold, a count line first)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LFW people file not found: {path}")
    lines = [(number, line.split()) for number, line in
             enumerate(path.read_text(encoding="utf-8").splitlines(), start=1) if line.strip()]
    if not lines:
        raise PairsError(f"{path}: empty; expected a fold count line")
    first_number, first = lines[0]
    (count,) = _ints(first, path, first_number, "a single count")
    single_fold = len(lines) == count + 1
    folds, cursor = ([], 0) if single_fold else ([], 1)
    fold_total = 1 if single_fold else count
    for _ in range(fold_total):
        if cursor >= len(lines):
            raise PairsError(f"{path}: {fold_total} folds announced, file ends after {len(folds)}")
        number, tokens = lines[cursor]
        (size,) = _ints(tokens, path, number, "a fold's people count")
        entries = lines[cursor + 1: cursor + 1 + size]
        if len(entries) != size or any(len(tokens) != 2 for _, tokens in entries):
            raise PairsError(f"{path}:{number}: fold {len(folds) + 1} announces {size} 'name count' lines")
        folds.append({tokens[0] for _, tokens in entries})
        cursor += 1 + size
    if cursor != len(lines):
        raise PairsError(f"{path}:{lines[cursor][0]}: text after the last announced fold")
    return folds


# ----------------------------------------------------------------------------------------------- user pair CSV


def _parse_same(value: str, path: Path, line_number: int) -> bool:
    word = value.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise PairsError(f"{path}:{line_number}: the label must be 1/0, yes/no or true/false, got {value!r}")


def read_pairs_csv(path: str | Path, images: str | Path | None = None, folds: int = LFW_FOLDS,
                   seed: int = KFOLD_SEED) -> list[Pair]:
    """A user's pair CSV with the header ``file_x,file_y,<label>`` (the label column under any name, e.g. ``same``
    or deepface's ``Decision``; values 1/0, Yes/No, true/false), files relative to ``images`` (default: the CSV's
    folder). Folds: ``KFold(folds, shuffle=True, random_state=seed)``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pairs CSV not found: {path}")
    image_root = Path(images) if images is not None else path.parent
    if not image_root.is_dir():
        raise FileNotFoundError(f"images folder not found: {image_root}")
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        rows = [(reader.line_num, row) for row in reader if any(cell.strip() for cell in row)]
    header = [cell.strip().lower() for cell in rows[0][1]] if rows else []
    if len(header) != len(CSV_COLUMNS) or header[:2] != list(CSV_COLUMNS[:2]):
        found = ",".join(rows[0][1]) if rows else "nothing"
        raise PairsError(f"{path}:1: expected the header {','.join(CSV_COLUMNS)} (the third column under any name, "
                         f"e.g. deepface's Decision), got {found!r}")
    entries = []
    for line_number, row in rows[1:]:
        if len(row) != len(CSV_COLUMNS):
            raise PairsError(f"{path}:{line_number}: expected 3 columns {','.join(CSV_COLUMNS)}, got {len(row)}: "
                             f"{','.join(row)!r}")
        file_x, file_y = (image_root / row[0].strip(), image_root / row[1].strip())
        for file in (file_x, file_y):
            if not file.is_file():
                raise PairsError(f"{path}:{line_number}: image not found: {file}")
        entries.append((file_x, file_y, _parse_same(row[2], path, line_number)))
    if len(entries) < folds:
        raise PairsError(f"{path}: {len(entries)} pairs, fewer than the {folds} cross-validation folds")
    fold_of = np.zeros(len(entries), dtype=int)
    for fold, (_, test) in enumerate(KFold(folds, shuffle=True, random_state=seed).split(entries)):
        fold_of[test] = fold
    return [Pair(x, y, same, int(fold)) for (x, y, same), fold in zip(entries, fold_of)]


def limit_pairs(pairs: Sequence[Pair], per_fold: int | None) -> list[Pair]:
    """The first ``per_fold`` pairs of each fold (for quick runs; not the protocol): half same, half different
    where the fold has both, so every fold still has both classes."""
    if per_fold is None:
        return list(pairs)
    kept = []
    for fold in sorted({pair.fold for pair in pairs}):
        members = [pair for pair in pairs if pair.fold == fold]
        same = [pair for pair in members if pair.same]
        different = [pair for pair in members if not pair.same]
        same_count = min(len(same), max(per_fold - len(different), (per_fold + 1) // 2))
        kept += same[:same_count] + different[:per_fold - same_count]
    return kept


def fold_identities(pairs: Sequence[Pair]) -> dict[int, set[str]]:
    identities: dict[int, set[str]] = {}
    for pair in pairs:
        identities.setdefault(pair.fold, set()).update(name for name in (pair.identity_x, pair.identity_y) if name)
    return identities


# --------------------------------------------------------------------------------------------------- protocol


@dataclass
class FoldResult:
    fold: int
    n_pairs: int
    accuracy: float
    train_accuracy: float
    auc: float
    threshold: float | None


@dataclass
class ProtocolResult:
    folds: list[FoldResult]
    scores: np.ndarray  # (M,) out-of-fold scores of the tested pairs
    same: np.ndarray  # (M,) their labels
    accuracies_mean: float
    accuracies_std: float
    auc: float
    tar_at_far: float
    fpr: np.ndarray
    tpr: np.ndarray


def _auc(scores: np.ndarray, same: np.ndarray) -> float:
    if len(np.unique(same)) < 2:
        return float("nan")
    fpr, tpr, _ = roc_curve(same, scores, drop_intermediate=False)
    return float(auc(fpr, tpr))


def tar_at_far(scores, same, far: float = TARGET_FAR) -> tuple[float, np.ndarray, np.ndarray]:
    """(TAR at FAR = ``far`` interpolated linearly along the ROC, fpr, tpr)."""
    fpr, tpr, _ = roc_curve(np.asarray(same, dtype=bool), np.asarray(scores), drop_intermediate=False)
    return float(np.interp(far, fpr, tpr)), fpr, tpr


def run_protocol(embeddings_x: np.ndarray, embeddings_y: np.ndarray, same, folds,
                 make_verifier: Callable[[], object], test_folds: Sequence[int] | None = None) -> ProtocolResult:
    """For each test fold: fit a fresh verifier on every pair of the other folds, score the test fold's pairs.
    ``embeddings_x``/``_y`` are (N, D), ``same`` and ``folds`` (N,)."""
    same = np.asarray(same, dtype=bool)
    folds = np.asarray(folds)
    test_folds = sorted(set(folds.tolist())) if test_folds is None else list(test_folds)
    missing = [fold for fold in test_folds if not (folds == fold).any()]
    if missing:
        raise InputError(f"test fold(s) {missing} have no pairs; folds present: {sorted(set(folds.tolist()))}")
    results, pooled_scores, pooled_same = [], [], []
    for fold in test_folds:
        test = folds == fold
        train = ~test
        if not train.any():
            raise InputError("the protocol needs pairs outside the test fold to fit on; only one fold given")
        verifier = make_verifier().fit(embeddings_x[train], embeddings_y[train], same[train])
        scores = verifier.score(embeddings_x[test], embeddings_y[test])
        predicted = verifier.predict(embeddings_x[test], embeddings_y[test])
        results.append(FoldResult(int(fold), int(test.sum()), float((predicted == same[test]).mean()),
                                  float(verifier.train_accuracy), _auc(scores, same[test]),
                                  getattr(verifier, "threshold", None)))
        pooled_scores.append(scores)
        pooled_same.append(same[test])
    scores, labels = np.concatenate(pooled_scores), np.concatenate(pooled_same)
    accuracies = np.array([result.accuracy for result in results])
    tar, fpr, tpr = tar_at_far(scores, labels)
    return ProtocolResult(results, scores, labels, float(accuracies.mean()),
                          float(accuracies.std(ddof=1)) if len(accuracies) > 1 else 0.0,
                          _auc(scores, labels), tar, fpr, tpr)


def fold_table(result: ProtocolResult) -> str:
    """The per-fold table as text (folds numbered from 1, as in LFW's README)."""
    lines = [f"{'fold':>4} {'pairs':>6} {'accuracy':>9} {'train acc':>9} {'AUC':>7} {'threshold':>10}"]
    for fold in result.folds:
        threshold = f"{fold.threshold:10.4f}" if fold.threshold is not None else f"{'-':>10}"
        lines.append(f"{fold.fold + 1:>4} {fold.n_pairs:>6} {fold.accuracy:9.4f} {fold.train_accuracy:9.4f} "
                     f"{fold.auc:7.4f} {threshold}")
    lines.append(f"mean accuracy {result.accuracies_mean:.4f} ± {result.accuracies_std:.4f} (sample std over "
                 f"{len(result.folds)} folds); pooled AUC {result.auc:.4f}; TAR@FAR={TARGET_FAR:g} "
                 f"{result.tar_at_far:.4f}")
    return "\n".join(lines)


def plot_roc(result: ProtocolResult, path: str | Path, title: str) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure, axis = plt.subplots(figsize=(5, 5))
    axis.plot(result.fpr, result.tpr, label=f"AUC {result.auc:.4f}")
    axis.axvline(TARGET_FAR, color="grey", linestyle=":", label=f"FAR {TARGET_FAR:g}: TAR {result.tar_at_far:.3f}")
    axis.set_xscale("log")
    axis.set_xlim(1 / max(len(result.same) - int(result.same.sum()), 2), 1)
    axis.set_ylim(0, 1.01)
    axis.set_xlabel("false accept rate")
    axis.set_ylabel("true accept rate")
    axis.set_title(title)
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def result_json(result: ProtocolResult, n_pairs: int, n_no_face: int, **extra) -> dict:
    """The report: the issue's keys (accuracy_mean, accuracy_std, tar_at_far_1e-3, auc, n_pairs, n_no_face), the
    per-fold numbers, and ``extra`` (benchmark, model, settings)."""
    def clean(value):
        return None if value is None or np.isnan(value) else round(float(value), 6)

    return {"accuracy_mean": clean(result.accuracies_mean), "accuracy_std": clean(result.accuracies_std),
            "tar_at_far_1e-3": clean(result.tar_at_far), "auc": clean(result.auc), "n_pairs": int(n_pairs),
            "n_no_face": int(n_no_face), **extra,
            "folds": [{"fold": fold.fold + 1, "n_pairs": fold.n_pairs, "accuracy": clean(fold.accuracy),
                       "train_accuracy": clean(fold.train_accuracy), "auc": clean(fold.auc),
                       "threshold": clean(fold.threshold)} for fold in result.folds]}
