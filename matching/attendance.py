"""Attendance from class photos: enrol students from their photos (with quality checks), then mark who is in a
class photo by a one-to-one assignment of faces to students with an unknown-face threshold calibrated on the
class's own gallery.

Scores are cosine similarities of L2-normalised embeddings; a face's score for a student is its best similarity
to any of that student's enrolled photos.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.stats import norm

from common.config import ConfigError
from common.detections import Detections

QUALITY_DEFAULTS = {
    "min_face_px": 80,           # shorter side of the face box in the photo
    # variance of the Laplacian of the aligned grey chip. On 120 LFW chips (dlib alignment): 1st percentile 13,
    # median 46; blurred with a 2-px Gaussian: 95th percentile 11; with 1 px: median 15.
    "min_sharpness": 12.0,
    "other_face_ratio": 0.4,     # faces smaller than this fraction of the largest one are background
}


@dataclass
class PhotoCheck:
    photo: str
    ok: bool
    reason: str = ""
    face: Detections | None = None
    chip: np.ndarray | None = None
    sharpness: float | None = None


def sharpness(chip: np.ndarray) -> float:
    """Variance of the Laplacian of the grey chip: low for blurred faces."""
    return float(cv2.Laplacian(cv2.cvtColor(chip, cv2.COLOR_RGB2GRAY), cv2.CV_64F).var())


def plausible_landmarks(box: np.ndarray, points: np.ndarray) -> str:
    """'' when the 5 points look like a face in ``box``, else what is wrong."""
    x1, y1, x2, y2 = box
    width, height = x2 - x1, y2 - y1
    margin = 0.15
    inside = ((points[:, 0] >= x1 - margin * width) & (points[:, 0] <= x2 + margin * width)
              & (points[:, 1] >= y1 - margin * height) & (points[:, 1] <= y2 + margin * height))
    if not inside.all():
        return "landmarks fall outside the face box"
    left_eye, right_eye, nose, left_mouth, right_mouth = points
    eye_distance = float(np.linalg.norm(right_eye - left_eye))
    if not 0.15 * width <= eye_distance <= 0.8 * width:
        return f"eye distance {eye_distance:.0f} px is implausible for a {width:.0f} px face (profile or wrong face?)"
    if not (min(left_eye[1], right_eye[1]) < nose[1] < max(left_mouth[1], right_mouth[1])):
        return "nose is not between the eyes and the mouth (face upside down or badly detected)"
    return ""


def check_enrollment_photo(photo: str, image: np.ndarray, detections: Detections, alignment,
                           quality: dict) -> PhotoCheck:
    """Exactly one face, large enough, sharp, with plausible landmarks; the aligned chip when it passes."""
    if len(detections) == 0:
        return PhotoCheck(photo, False, "no face found")
    sides = (detections.boxes[:, 2:] - detections.boxes[:, :2]).min(1).values
    largest = int(sides.argmax())
    others = int((sides >= quality["other_face_ratio"] * sides[largest]).sum()) - 1
    if others:
        return PhotoCheck(photo, False, f"{others + 1} faces: an enrolment photo must show the student alone")
    face = detections[[largest]]
    side = float(sides[largest])
    if side < quality["min_face_px"]:
        return PhotoCheck(photo, False, f"face is {side:.0f} px, needs at least {quality['min_face_px']} px")
    problem = plausible_landmarks(face.boxes[0].numpy(), face.landmarks[0].numpy())
    if problem:
        return PhotoCheck(photo, False, problem)
    chip = alignment.align(image, face.landmarks)[0]
    sharp = sharpness(chip)
    if sharp < quality["min_sharpness"]:
        return PhotoCheck(photo, False, f"blurred (sharpness {sharp:.0f} < {quality['min_sharpness']:g})",
                          sharpness=sharp)
    return PhotoCheck(photo, True, "", face, chip, sharp)


def roster_warnings(embeddings: dict[str, np.ndarray], photos: dict[str, list[str]], threshold: float) -> list[str]:
    """Per student: photos that would not be accepted as each other (similarity under ``threshold``), and photos
    that another student's photos match better than the student's own and above ``threshold`` (a duplicate or
    mislabeled photo)."""
    warnings = []
    names = sorted(embeddings)
    for name in names:
        own = embeddings[name]
        if len(own) > 1:
            similarity = own @ own.T
            np.fill_diagonal(similarity, np.nan)
            worst = np.nanmin(similarity)
            if worst < threshold:
                i, j = np.unravel_index(np.nanargmin(similarity), similarity.shape)
                warnings.append(f"{name}: photos {photos[name][i]} and {photos[name][j]} disagree (similarity "
                                f"{worst:.3f} < {threshold:.3f}): are both of {name}?")
        for index, vector in enumerate(own):
            own_best = float(np.max(np.delete(own, index, axis=0) @ vector)) if len(own) > 1 else -math.inf
            for other in names:
                if other == name:
                    continue
                other_best = float(np.max(embeddings[other] @ vector))
                if other_best >= threshold and other_best > own_best:
                    warnings.append(f"{name}: photo {photos[name][index]} matches {other} ({other_best:.3f}) better "
                                    f"than {name}'s other photos: duplicate or mislabeled?")
    return warnings


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
    similarity = vectors @ vectors.T
    impostor = similarity[np.triu(owners[:, None] != owners[None, :], k=1)]
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


@dataclass
class PhotoMarks:
    photo: str
    detections: Detections
    scores: np.ndarray
    pairs: list[tuple[int, int]]
    chips: np.ndarray = field(repr=False, default=None)

    @property
    def unknown(self) -> list[int]:
        assigned = {face for face, _ in self.pairs}
        return [face for face in range(len(self.detections)) if face not in assigned]


def merge_session(photo_marks: list[PhotoMarks], names: list[str]) -> list[dict]:
    """Per student: present if assigned in any photo; the best-scoring sighting (photo, box, score)."""
    best: dict[int, tuple[float, str, list[float]]] = {}
    for marks in photo_marks:
        for face, student in marks.pairs:
            score = float(marks.scores[face, student])
            if student not in best or score > best[student][0]:
                best[student] = (score, marks.photo, [round(float(v), 1) for v in marks.detections.boxes[face]])
    result = []
    for student, name in enumerate(names):
        if student in best:
            score, photo, box = best[student]
            result.append({"student": name, "present": True, "score": round(score, 4), "photo": photo, "box": box})
        else:
            top = max((float(m.scores[:, student].max()) for m in photo_marks if len(m.scores)), default=None)
            result.append({"student": name, "present": False, "score": None if top is None else round(top, 4),
                           "photo": None, "box": None})
    return result
