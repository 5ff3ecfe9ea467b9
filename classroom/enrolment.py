"""Enrolment checks: is a photo usable to enrol a student (one clear, large, sharp face with plausible landmarks),
and do a roster's photos agree with each other (``roster_warnings``); and the copy of a photo whose face is as small
as a back row's in a class photo (``small_face_copy``), which calibrates the thresholds of small faces."""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from common.detections import Detections, face_widths
from common.io import at_size

QUALITY_DEFAULTS = {
    "min_face_px": 80,           # shorter side of the face box in the photo
    # variance of the Laplacian of the aligned grey chip. On 120 LFW chips (dlib alignment): 1st percentile 13,
    # median 46; blurred with a 2-px Gaussian: 95th percentile 11; with 1 px: median 15.
    "min_sharpness": 12.0,
    "other_face_ratio": 0.4,     # faces smaller than this fraction of the largest one are background
}


SMALL_FACE_JPEG = 90  # the quality of the JPEG of a small-face copy, a phone's


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


def small_face_copy(image: np.ndarray, landmarks: torch.Tensor, face_px: float) -> tuple[np.ndarray, torch.Tensor]:
    """(``image`` shrunk by area so that the face of ``landmarks`` (1, 5, 2) is ``face_px`` wide and JPEG-coded, as
    a face at the back of a class photo; the landmarks on that copy). A face already that small is only coded."""
    height, width = image.shape[:2]
    scale = min(1.0, face_px / float(face_widths(landmarks)[0]))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    factors = torch.tensor([size[0] / width, size[1] / height], dtype=landmarks.dtype)
    return at_size(image, size, SMALL_FACE_JPEG), landmarks * factors
