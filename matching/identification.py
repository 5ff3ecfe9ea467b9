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


def student_scores(face_embeddings: np.ndarray, gallery) -> np.ndarray:
    """(F, S) best cosine similarity of each face to each student's enrolled photos."""
    if len(face_embeddings) == 0 or len(gallery.names) == 0:
        return np.zeros((len(face_embeddings), len(gallery.names)), np.float32)
    similarity = face_embeddings @ gallery.vectors.T  # (F, M)
    scores = np.full((len(face_embeddings), len(gallery.names)), -1.0, np.float32)
    for student in range(len(gallery.names)):
        mine = gallery.owners == student
        if mine.any():
            scores[:, student] = similarity[:, mine].max(1)
    return scores


TAILS = ("normal", "empirical")
# cosines are Fisher-transformed (arctanh) before the normal fit; this keeps a cosine of exactly ±1 finite
FISHER_CLIP = 1 - 1e-6


def impostor_scores(vectors: np.ndarray, owners: np.ndarray) -> np.ndarray:
    """The cosine of every pair of ``vectors`` (M, D) with different ``owners`` (M,), each pair once."""
    similarity = vectors @ vectors.T  # (M, M)
    return similarity[np.triu(owners[:, None] != owners[None, :], k=1)]


def calibrate_unknown_threshold(vectors: np.ndarray, owners: np.ndarray, target_far: float, floor: float,
                                tail: str = "empirical") -> tuple[float, int]:
    """(threshold, impostor pairs): the similarity that impostor scores (photos of different enrolled students,
    ``vectors`` (M, D) owned by ``owners`` (M,)) exceed with probability ``target_far``, never under ``floor``.

    ``tail="empirical"``: their ``1 - target_far`` quantile. A class of 30 has ~1,700 impostor pairs, so at 1e-3
    that is about the single largest pair, and one look-alike pair sets the whole class's threshold.
    ``tail="normal"``: a normal fitted to the Fisher-transformed scores (arctanh), read at ``1 - target_far``: the
    tail estimated from every pair, not from the most extreme one."""
    check_tail(tail)
    impostor = impostor_scores(vectors, owners) if len(vectors) >= 2 else np.zeros(0)
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
    impostor_pairs: int

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
                         target_far: float, floor: float, tail: str = "normal") -> UnknownThresholds:
    """Thresholds per face size and per student from a gallery's impostor scores (``vectors`` (M, D) of photos
    owned by ``owners`` (M,), indexes of ``students``).

    - Per student: a face's score for a student is its best over the student's k photos, which an impostor exceeds
      about k times as often as one photo's score; so the student's threshold is the one at ``target_far / k``.
    - Per face size: ``degraded`` maps a face width (px) to the same photos embedded after being shrunk to faces
      that wide ((M, D), row for row): their scores against the other students' full-size photos are the impostor
      scores of faces that small, and give that size's thresholds; ``floor`` moves with them (by the shift of the
      Fisher-transformed impostor mean), so a small face is held to the same rate, neither accepted too easily nor
      hopelessly rejected."""
    check_tail(tail)
    photos = np.bincount(owners, minlength=students).astype(np.float64)  # (S,)
    rates = target_far / np.maximum(photos, 1)  # (S,)
    different = owners[:, None] != owners[None, :]  # (M, M)
    full = impostor_scores(vectors, owners) if len(vectors) >= 2 else np.zeros(0)
    if full.size == 0:
        return UnknownThresholds((), np.full((1, students), floor, np.float64), floor, 0)
    rows, sizes = [], sorted(degraded)
    for face_px in sizes:
        small = (degraded[face_px] @ vectors.T)[different]  # degraded photo vs another student's photo
        shifted_floor = float(np.tanh(fisher(np.array(floor)) + fisher(small).mean() - fisher(full).mean()))
        rows.append(np.maximum(tail_quantile(small, rates, tail), shifted_floor))
    rows.append(np.maximum(tail_quantile(full, rates, tail), floor))
    single = max(floor, float(tail_quantile(full, np.array([target_far]), tail)[0]))
    return UnknownThresholds(tuple(float(size) for size in sizes), np.stack(rows), single, int(full.size))


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
