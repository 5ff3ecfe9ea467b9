"""Generated group photos: head-and-shoulders crops of real portraits seated in rows on a painted wall, then lit,
blurred and noised as a phone would. The classroom benchmark (photos of a class) and the group detection
benchmark (crowded rows of small faces) compose their photos with these.

A portrait is a 250-px LFW photo; ``HEAD_CROP`` is the part of it pasted, ``NOMINAL_FACE`` its usual face box.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from common.config import ConfigError

HEAD_CROP = (25, 15, 225, 250)  # x1, y1, x2, y2 of a 250-px LFW photo pasted: head and shoulders
NOMINAL_FACE = (80.0, 65.0, 172.0, 187.0)  # the face box of an LFW photo without a detected face (median MTCNN)


def wall(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """(H, W, 3) uint8 RGB: a painted wall, lit from above, with a faint low-frequency texture."""
    colour = rng.uniform(120, 200, 3)
    ramp = np.linspace(1.1, 0.85, height)[:, None, None]  # (H, 1, 1)
    texture = cv2.resize(rng.normal(0, 6, (height // 64 + 2, width // 64 + 2)).astype(np.float32), (width, height),
                         interpolation=cv2.INTER_CUBIC)[..., None]  # (H, W, 1)
    return np.clip(colour * ramp + texture, 0, 255).astype(np.uint8)


def feathered_mask(height: int, width: int) -> np.ndarray:
    """(H, W, 1) float32 in [0, 1]: an ellipse filling the crop, its edge blurred over a tenth of its width."""
    mask = np.zeros((height, width), np.float32)
    cv2.ellipse(mask, (width // 2, height // 2), (int(width * 0.46), int(height * 0.52)), 0, 0, 360, 1.0, -1)
    sigma = max(1.0, width / 10)
    return cv2.GaussianBlur(mask, (0, 0), sigma)[..., None]


def seat_layout(row_face_px, seats_per_row, width: int, height: int, rng: np.random.Generator,
                spacing: float = 3.6, spread: float = 1.8, top: float = 0.3) -> list[tuple[float, float, float]]:
    """(face centre x, face centre y, face width) of every seat, back row first. ``row_face_px``: face width per
    row; ``seats_per_row``: one count, or one per row; ``spacing``: seat centres apart in face widths of the row;
    ``spread``: rows apart relative to the least that keeps faces uncovered (a row's heads then cover only the
    shoulders of the row behind); ``top``: the back row's faces start this fraction of the height down."""
    counts = [seats_per_row] * len(row_face_px) if np.ndim(seats_per_row) == 0 else list(seats_per_row)
    face_half_height = (NOMINAL_FACE[3] - NOMINAL_FACE[1]) / 2 / (NOMINAL_FACE[2] - NOMINAL_FACE[0])  # in widths
    above_face = (NOMINAL_FACE[1] - HEAD_CROP[1]) / (NOMINAL_FACE[2] - NOMINAL_FACE[0])
    centres_y = [0.0]
    for back, front in zip(row_face_px, row_face_px[1:]):
        centres_y.append(centres_y[-1] + spread * (face_half_height * (back + front) + above_face * front))
    top = top * height
    if top + centres_y[-1] + 2.5 * row_face_px[-1] > height:
        raise ConfigError(f"rows of faces {[round(px) for px in row_face_px]} px wide do not fit a {width}x{height} "
                          "photo")
    seats = []
    for row, (face_px, count) in enumerate(zip(row_face_px, counts)):
        step = spacing * face_px
        start = width / 2 - step * (count - 1) / 2 + rng.uniform(-0.3, 0.3) * step
        for seat in range(count):
            x = start + seat * step + rng.uniform(-0.15, 0.15) * step
            y = top + centres_y[row] + rng.uniform(-0.1, 0.1) * face_px
            seats.append((x, y, face_px * rng.uniform(0.9, 1.1)))
    return seats


def paste_portraits(canvas: np.ndarray, portraits: list[Path], face_boxes: list[np.ndarray],
                    seats: list[tuple[float, float, float]]) -> list[tuple[int, np.ndarray]]:
    """Blend each portrait's ``HEAD_CROP`` into ``canvas`` ((H, W, 3) float32, changed in place) so its face
    (``face_boxes``: xyxy in the portrait) is centred on a seat with the seat's face width, in order (later ones
    in front). → (portrait index, (4,) face box xyxy in the canvas) of each portrait at least partly inside it."""
    height, width = canvas.shape[:2]
    x1, y1, x2, y2 = HEAD_CROP
    placed = []
    for index, (path, face, (cx, cy, face_px)) in enumerate(zip(portraits, face_boxes, seats)):
        crop = cv2.imread(str(path))[y1:y2, x1:x2, ::-1]
        scale = face_px / (face[2] - face[0])
        crop = cv2.resize(crop, (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale))),
                          interpolation=cv2.INTER_AREA).astype(np.float32)
        face_centre = ((face[0] + face[2]) / 2 - x1) * scale, ((face[1] + face[3]) / 2 - y1) * scale
        left, top = round(cx - face_centre[0]), round(cy - face_centre[1])
        # the part of the crop inside the canvas
        cl, ct = max(0, -left), max(0, -top)
        cr, cb = min(crop.shape[1], width - left), min(crop.shape[0], height - top)
        if cr <= cl or cb <= ct:
            continue
        alpha = feathered_mask(*crop.shape[:2])[ct:cb, cl:cr]
        region = canvas[top + ct:top + cb, left + cl:left + cr]
        region[:] = alpha * crop[ct:cb, cl:cr] + (1 - alpha) * region
        placed.append((index, np.array([(face[0] - x1) * scale + left, (face[1] - y1) * scale + top,
                                        (face[2] - x1) * scale + left, (face[3] - y1) * scale + top], np.float32)))
    return placed


def phone_effects(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(H, W, 3) uint8: uneven light (a sideways brightness ramp, gamma, a colour cast), slight blur, sensor
    noise; the JPEG comes when the photo is saved at each size."""
    height, width = image.shape[:2]
    ramp = np.linspace(*rng.uniform(0.75, 1.15, 2), width, dtype=np.float32)[None, :, None]  # (1, W, 1)
    cast = rng.uniform(0.94, 1.06, 3).astype(np.float32)
    lit = 255.0 * (image.astype(np.float32) / 255.0) ** rng.uniform(0.8, 1.25) * ramp * cast
    blurred = cv2.GaussianBlur(lit, (0, 0), rng.uniform(0.5, 1.0) * width / 3840)
    noisy = blurred + rng.normal(0, 2.0, blurred.shape).astype(np.float32)
    return np.clip(noisy, 0, 255).astype(np.uint8)

