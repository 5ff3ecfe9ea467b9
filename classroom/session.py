"""One session's marks: the faces of each class photo assigned to students (``PhotoMarks``), merged over the
session's photos (``merge_session``)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from common.detections import Detections


@dataclass
class PhotoMarks:
    photo: str
    detections: Detections
    scores: np.ndarray
    pairs: list[tuple[int, int]]
    chips: np.ndarray = field(repr=False, default=None)
    embeddings: np.ndarray = field(repr=False, default=None)  # (F, D) the faces', L2-normalised
    face_px: np.ndarray = field(repr=False, default=None)     # (F,) the faces' widths from their eye distance

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
