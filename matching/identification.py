"""Open-set identification over embeddings: a face's score for each enrolled person (``student_scores``), the
unknown-face threshold calibrated on a gallery's own impostor pairs (``calibrate_unknown_threshold``), and the
one-to-one assignment of faces to people with that threshold and a margin (``assign``).

Scores are cosine similarities of L2-normalised embeddings; a face's score for a person is its best similarity
to any of that person's enrolled embeddings.
"""
from __future__ import annotations


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
    if tail not in TAILS:
        raise ConfigError(f"matching.tail must be one of {', '.join(TAILS)}, got {tail!r}")
    if len(vectors) < 2:
        return floor, 0
    impostor = impostor_scores(vectors, owners)
    if impostor.size == 0:
        return floor, 0
    if tail == "empirical":
        return max(floor, float(np.quantile(impostor, 1 - target_far))), int(impostor.size)
    fisher = np.arctanh(np.clip(impostor, -FISHER_CLIP, FISHER_CLIP))
    threshold = float(np.tanh(fisher.mean() + norm.ppf(1 - target_far) * fisher.std()))
    return max(floor, threshold), int(impostor.size)


def assign(scores: np.ndarray, threshold: float, min_margin: float = 0.0) -> list[tuple[int, int]]:
    """One-to-one (face, student) pairs maximising the total margin over ``threshold``: every face may instead stay
    unknown at no cost, so a pair under the threshold is never chosen. A pair is kept only when the face's score for
    its student beats its score for every other student by ``min_margin``: a face that looks about as much like two
    students (a stranger resembling several, a blurred background face) stays unknown rather than marking one."""
    faces, students = scores.shape
    if faces == 0 or students == 0:
        return []
    # columns: the students, then one "unknown" slot per face
    cost = np.zeros((faces, students + faces), np.float64)
    cost[:, :students] = -(scores - threshold)
    pairs = []
    for face, column in zip(*linear_sum_assignment(cost)):
        if column >= students or scores[face, column] < threshold:
            continue
        if min_margin > 0 and students > 1:
            rival = np.delete(scores[face], column).max()  # the face's best score for any other student
            if scores[face, column] - rival < min_margin:
                continue
        pairs.append((int(face), int(column)))
    return pairs
