"""Open-set identification over embeddings: a face's score for each enrolled person (``student_scores``), the
unknown-face threshold calibrated on a gallery's own impostor pairs (``calibrate_unknown_threshold``; per face size
and per person: ``calibrate_thresholds``), and the one-to-one assignment of faces to people with that threshold and
a margin (``assign``).

Scores are cosine similarities of L2-normalised embeddings; a face's score for a person is its best similarity
to any of that person's enrolled embeddings.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.stats import norm

from common.config import ConfigError


FACE_CHUNK = 256  # faces scored at once: bounds the (faces × gallery photos) similarity matrix


def student_scores(face_embeddings: np.ndarray, gallery) -> np.ndarray:
    """(F, S) best cosine similarity of each face to each student's enrolled photos (-1 for a student without
    photos). One matrix product per chunk of faces, then the best per student in one ``np.maximum.reduceat`` over
    the gallery's photos grouped by owner: no loop over students, so the cost grows with the gallery's photos,
    not with students × photos."""
    students = len(gallery.names)
    scores = np.full((len(face_embeddings), students), -1.0, np.float32)
    if len(face_embeddings) == 0 or len(gallery.owners) == 0:
        return scores
    owners = np.asarray(gallery.owners)
    order = None if np.all(owners[:-1] <= owners[1:]) else np.argsort(owners, kind="stable")
    grouped = owners if order is None else owners[order]  # (M,) non-decreasing
    starts = np.flatnonzero(np.r_[True, grouped[1:] != grouped[:-1]])  # (U,) first photo of each owner
    for first in range(0, len(face_embeddings), FACE_CHUNK):
        similarity = face_embeddings[first:first + FACE_CHUNK] @ gallery.vectors.T  # (f, M)
        if order is not None:
            similarity = similarity[:, order]
        scores[first:first + FACE_CHUNK, grouped[starts]] = np.maximum.reduceat(similarity, starts, axis=1)
    return scores


TAILS = ("normal", "empirical")
# cosines are Fisher-transformed (arctanh) before the normal fit; this keeps a cosine of exactly ±1 finite
FISHER_CLIP = 1 - 1e-6


# impostor pairs a calibration scores at most: every pair of a class (a few thousand) is far under it; a gallery of
# 100,000 people (500,000 photos, 1.25e11 pairs) is calibrated on a seeded uniform sample of this many
MAX_IMPOSTOR_PAIRS = 1_000_000
PAIR_CHUNK = 65_536  # pairs whose embeddings are gathered at once
SAMPLE_SEED = 0


def impostor_pairs(owners: np.ndarray, max_pairs: int = MAX_IMPOSTOR_PAIRS, ordered: bool = False
                   ) -> tuple[np.ndarray, np.ndarray, int]:
    """(rows, columns, how many such pairs exist): the photo pairs (i, j) with different ``owners`` (M,), each
    unordered pair once (``ordered``: both (i, j) and (j, i)); all of them when there are at most ``max_pairs``,
    else a seeded uniform sample of ``max_pairs`` (drawn with replacement)."""
    owners = np.asarray(owners)
    same = np.bincount(owners).astype(np.int64)
    total = (len(owners) ** 2 - int((same ** 2).sum())) // (1 if ordered else 2)  # pairs with different owners
    if total <= max_pairs:
        different = owners[:, None] != owners[None, :]  # (M, M), at most ~1,400 photos here
        rows, columns = np.nonzero(different if ordered else np.triu(different, k=1))
        return rows, columns, total
    rng = np.random.default_rng(SAMPLE_SEED)
    rows, columns = np.zeros(0, np.int64), np.zeros(0, np.int64)
    while len(rows) < max_pairs:  # rejection: almost every draw of a large gallery is a pair of two people
        draw_rows, draw_columns = rng.integers(len(owners), size=(2, max_pairs))
        keep = owners[draw_rows] != owners[draw_columns]
        rows, columns = np.r_[rows, draw_rows[keep]], np.r_[columns, draw_columns[keep]]
    return rows[:max_pairs], columns[:max_pairs], total


def pair_scores(first: np.ndarray, second: np.ndarray, rows: np.ndarray, columns: np.ndarray, every_pair: bool
                ) -> np.ndarray:
    """(P,) cosine of ``first[rows[p]]`` and ``second[columns[p]]`` (L2-normalised (M, D) arrays): for
    ``every_pair`` of a small gallery, read from the (M, M) matrix product; for a sample, a chunk of pairs at a
    time."""
    if every_pair:
        return (first @ second.T)[rows, columns]
    scores = np.empty(len(rows), np.float32)
    for start in range(0, len(rows), PAIR_CHUNK):
        chunk = slice(start, start + PAIR_CHUNK)
        scores[chunk] = np.einsum("pd,pd->p", first[rows[chunk]], second[columns[chunk]])
    return scores


def impostor_scores(vectors: np.ndarray, owners: np.ndarray, max_pairs: int = MAX_IMPOSTOR_PAIRS) -> np.ndarray:
    """The cosine of every pair of ``vectors`` (M, D) with different ``owners`` (M,), each pair once, or of a
    sample of ``max_pairs`` of them (``impostor_pairs``)."""
    rows, columns, total = impostor_pairs(owners, max_pairs)
    return pair_scores(vectors, vectors, rows, columns, len(rows) == total)


def calibrate_unknown_threshold(vectors: np.ndarray, owners: np.ndarray, target_far: float, floor: float,
                                tail: str = "empirical", max_pairs: int = MAX_IMPOSTOR_PAIRS) -> tuple[float, int]:
    """(threshold, impostor pairs): the similarity that impostor scores (photos of different enrolled students,
    ``vectors`` (M, D) owned by ``owners`` (M,)) exceed with probability ``target_far``, never under ``floor``.

    ``tail="empirical"``: their ``1 - target_far`` quantile. A class of 30 has ~1,700 impostor pairs, so at 1e-3
    that is about the single largest pair, and one look-alike pair sets the whole class's threshold.
    ``tail="normal"``: a normal fitted to the Fisher-transformed scores (arctanh), read at ``1 - target_far``: the
    tail estimated from every pair, not from the most extreme one. Impostor pairs: every one, or a sample of
    ``max_pairs`` in a large gallery; the count returned is of those scored."""
    check_tail(tail)
    impostor = impostor_scores(vectors, owners, max_pairs) if len(vectors) >= 2 else np.zeros(0)
    if impostor.size == 0:
        return floor, 0
    return max(floor, float(tail_quantile(impostor, np.array([target_far]), tail)[0])), int(impostor.size)


def check_tail(tail: str) -> None:
    if tail not in TAILS:
        raise ConfigError(f"matching.tail must be one of {', '.join(TAILS)}, got {tail!r}")


def fisher(scores: np.ndarray) -> np.ndarray:
    return np.arctanh(np.clip(scores, -FISHER_CLIP, FISHER_CLIP))


def tail_quantile(impostor: np.ndarray, rates: np.ndarray, tail: str) -> np.ndarray:
    """(R,) the scores ``impostor`` scores exceed with probability ``rates`` (R,): their quantiles, or a normal's
    fitted to their Fisher transform (``calibrate_unknown_threshold``)."""
    if tail == "empirical":
        return np.quantile(impostor, 1 - rates)
    transformed = fisher(impostor)
    return np.tanh(transformed.mean() + norm.ppf(1 - rates) * transformed.std())


@dataclass
class UnknownThresholds:
    """The score a face needs to be marked as each student, by the face's width in the photo.

    ``table`` (B + 1, S): row b < B for faces nearest ``face_px[b]`` wide (on a log scale), the last row for faces
    at full size (nearer ``2 * face_px[-1]`` than ``face_px[-1]``, or every face when ``face_px`` is empty)."""

    face_px: tuple[float, ...]
    table: np.ndarray
    full_size: float      # a full-size face's for a student enrolled from one photo: the class's figure
    impostor_pairs: int   # impostor pairs scored: every pair of the gallery, or a sample of them
    gallery_pairs: int    # impostor pairs the gallery has

    def rows(self, face_widths: np.ndarray) -> np.ndarray:
        """(F,) the row of ``table`` for faces ``face_widths`` (F,) px wide."""
        centres = np.log(np.array([*self.face_px, 2 * self.face_px[-1]] if self.face_px else [1.0]))
        widths = np.log(np.maximum(np.asarray(face_widths, np.float64), 1.0))
        return np.abs(widths[:, None] - centres[None, :]).argmin(1)  # (F,)

    def for_faces(self, face_widths: np.ndarray) -> np.ndarray:
        """(F, S) each face's threshold for each student."""
        return self.table[self.rows(face_widths)]

    def summary(self) -> dict[str, list[float]]:
        """Per face width (``"full"``: full size), the lowest and highest threshold of any student."""
        names = [f"{size:g}" for size in self.face_px] + ["full"]
        return {name: [round(float(row.min()), 4), round(float(row.max()), 4)] for name, row in zip(names, self.table)}


def calibrate_thresholds(vectors: np.ndarray, owners: np.ndarray, students: int, degraded: dict[float, np.ndarray],
                         target_far: float, floor: float, tail: str = "normal", max_pairs: int = MAX_IMPOSTOR_PAIRS
                         ) -> UnknownThresholds:
    """Thresholds per face size and per student from a gallery's impostor scores (``vectors`` (M, D) of photos
    owned by ``owners`` (M,), indexes of ``students``).

    - Per student: a face's score for a student is its best over the student's k photos, which an impostor exceeds
      about k times as often as one photo's score; so the student's threshold is the one at ``target_far / k``.
    - Per face size: ``degraded`` maps a face width (px) to the same photos embedded after being shrunk to faces
      that wide ((M, D), row for row): their scores against the other students' full-size photos are the impostor
      scores of faces that small, and give that size's thresholds; ``floor`` moves with them (by the shift of the
      Fisher-transformed impostor mean), so a small face is held to the same rate, neither accepted too easily nor
      hopelessly rejected.
    Impostor pairs: every one, or in a large gallery a sample of ``max_pairs`` (``impostor_pairs``)."""
    check_tail(tail)
    photos = np.bincount(owners, minlength=students).astype(np.float64)  # (S,)
    rates = target_far / np.maximum(photos, 1)  # (S,)
    pair_rows, pair_columns, total = impostor_pairs(owners, max_pairs)
    if len(pair_rows) == 0:
        return UnknownThresholds((), np.full((1, students), floor, np.float64), floor, 0, 0)
    full = pair_scores(vectors, vectors, pair_rows, pair_columns, len(pair_rows) == total)
    rows, sizes = [], sorted(degraded)
    if sizes:  # a degraded photo against another student's photo: both orders of a pair
        ordered_rows, ordered_columns, ordered_total = impostor_pairs(owners, max_pairs, ordered=True)
    for face_px in sizes:
        small = pair_scores(degraded[face_px], vectors, ordered_rows, ordered_columns,
                            len(ordered_rows) == ordered_total)
        shifted_floor = float(np.tanh(fisher(np.array(floor)) + fisher(small).mean() - fisher(full).mean()))
        rows.append(np.maximum(tail_quantile(small, rates, tail), shifted_floor))
    rows.append(np.maximum(tail_quantile(full, rates, tail), floor))
    single = max(floor, float(tail_quantile(full, np.array([target_far]), tail)[0]))
    return UnknownThresholds(tuple(float(size) for size in sizes), np.stack(rows), single, int(full.size), total)


def assign(scores: np.ndarray, threshold: float | np.ndarray, min_margin: float = 0.0) -> list[tuple[int, int]]:
    """One-to-one (face, student) pairs maximising the total margin over ``threshold`` (one number, or (F, S) per
    face and student): every face may instead stay unknown at no cost, so a pair under the threshold is never
    chosen. A pair is kept only when the face's score for
    its student beats its score for every other student by ``min_margin``: a face that looks about as much like two
    students (a stranger resembling several, a blurred background face) stays unknown rather than marking one."""
    faces, students = scores.shape
    if faces == 0 or students == 0:
        return []
    # columns: the students, then one "unknown" slot per face
    threshold = np.broadcast_to(threshold, scores.shape)  # (F, S)
    cost = np.zeros((faces, students + faces), np.float64)
    cost[:, :students] = -(scores - threshold)
    pairs = []
    for face, column in zip(*linear_sum_assignment(cost)):
        if column >= students or scores[face, column] < threshold[face, column]:
            continue
        if min_margin > 0 and students > 1:
            rival = np.delete(scores[face], column).max()  # the face's best score for any other student
            if scores[face, column] - rival < min_margin:
                continue
        pairs.append((int(face), int(column)))
    return pairs
