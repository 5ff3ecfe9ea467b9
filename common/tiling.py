"""Photo scaling for detectors: a photo resized by a factor, model input padded to a stride multiple, and the one
tile planner: the passes (scales, overlapping tiles) that let a detector with a limited range of face sizes find
every face from a minimum size up to the whole photo (``plan_passes``).

A face cut by a tile's inner edge is dropped from that tile: the tiles of a pass overlap by the largest face that
pass is responsible for, so it lies whole inside a neighbour; larger faces are the coarser passes' business.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from common.config import ConfigError
from common.detections import Detections

EDGE_MARGIN_PX = 2.0  # a face this close to a tile's inner edge counts as cut


def resize_by(image: np.ndarray, scale: float) -> np.ndarray:
    """(H, W, C) photo resized by ``scale`` (each side rounded, at least 1 px): area averaging to shrink, bilinear
    to enlarge; the photo itself at scale 1."""
    if scale == 1.0:
        return image
    height, width = image.shape[:2]
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)


def pad_to_multiple(inputs: torch.Tensor, multiple: int) -> torch.Tensor:
    """(B, C, H, W) padded right/bottom with zeros to multiples of ``multiple`` (a network's coarsest stride)."""
    height, width = inputs.shape[-2:]
    return F.pad(inputs, (0, -width % multiple, 0, -height % multiple))


@dataclass(frozen=True)
class Pass:
    """One look at a photo: the photo resized by ``scale`` (network input px per photo px) and cut into ``tiles``
    (x1, y1, x2, y2 in photo px; one tile for the whole photo), finding faces ``face_px`` wide (photo px)."""

    scale: float
    tiles: tuple[tuple[int, int, int, int], ...]
    face_px: tuple[float, float]


def _starts(extent: int, side: int, step: float) -> list[int]:
    if extent <= side:
        return [0]
    count = math.ceil((extent - side) / step) + 1
    return [min(round(i * step), extent - side) for i in range(count)]


def _passes(height: int, width: int, scales: list[float], smallest: float, input_side: int) -> list[Pass]:
    """The passes at ``scales`` (coarse to fine): each finer pass takes the faces too small for the one before, so
    its tiles overlap by the largest of them (and a 2-px margin) and a face cut by one tile lies whole in the next."""
    passes, largest_face = [], float(min(height, width))
    for index, scale in enumerate(scales):
        upper = largest_face if index == 0 else smallest / scales[index - 1]
        side = min(max(height, width), math.ceil(input_side / scale))
        step = side - (upper + 2 * EDGE_MARGIN_PX) if index else side
        if step < side / 4:
            return []
        tiles = tuple((x, y, min(x + side, width), min(y + side, height))
                      for y in _starts(height, side, step) for x in _starts(width, side, step))
        passes.append(Pass(scale, tiles, (smallest / scale, upper)))
    return passes


def check_face_sizes(min_face_px: float | None, face_px: Sequence[float]) -> None:
    """Refuse a ``face_px`` range that is not (smallest, largest) with 0 < smallest < largest, or a
    ``min_face_px`` that is not a positive number of pixels or None: what ``plan_passes`` needs."""
    smallest, largest = map(float, face_px)
    if not 0 < smallest < largest:
        raise ConfigError(f"face_px must be [smallest, largest] with 0 < smallest < largest, got {list(face_px)}")
    if min_face_px is not None and min_face_px <= 0:
        raise ConfigError(f"min_face_px must be a positive number of pixels or null, got {min_face_px}")


def plan_passes(height: int, width: int, min_face_px: float | None, face_px: Sequence[float], input_side: int
                ) -> list[Pass]:
    """The passes that find every face from ``min_face_px`` wide up to the photo's shorter side, and nothing more,
    for a detector that finds faces ``face_px`` = (smallest, largest) px wide at its input and looks at most
    ``input_side`` px square at a time (a fixed input, or a fully convolutional network's memory limit).

    The coarsest pass shows the whole photo at once (scale ``input_side / longer side``, or less where that
    leaves the largest faces over ``largest``); the finest shows a ``min_face_px`` face ``smallest`` px wide. In
    between, each pass is at most ``r`` times finer than the one before (evenly spaced in log scale), ``r`` (at most
    largest / smallest) chosen to cost the fewest input pixels: a larger ``r`` needs fewer passes but tiles
    overlapping more. ``min_face_px`` None: the coarsest pass alone."""
    check_face_sizes(min_face_px, face_px)
    smallest, largest = map(float, face_px)
    coarsest = min(input_side / max(height, width), largest / min(height, width))
    finest = coarsest if min_face_px is None else max(coarsest, smallest / min_face_px)
    best, best_cost = _passes(height, width, [coarsest], smallest, input_side), None
    if finest > coarsest * (1 + 1e-6):
        for ratio in np.geomspace(1.25, largest / smallest, 24):
            steps = math.ceil(math.log(finest / coarsest) / math.log(ratio) - 1e-9)
            scales = np.geomspace(coarsest, finest, steps + 1).tolist()
            passes = _passes(height, width, scales, smallest, input_side)
            cost = sum(len(p.tiles) * min(input_side, p.scale * max(height, width)) ** 2 for p in passes)
            if passes and (best_cost is None or cost < best_cost):
                best, best_cost = passes, cost
        if best_cost is None:
            raise ConfigError(f"no tiling finds {min_face_px}-px faces with a detector of faces {list(face_px)} px "
                              f"at a {input_side}-px input")
    return best


def detect_on_passes(image: np.ndarray, passes: Sequence[Pass],
                     detect_crops: Callable[[list[np.ndarray], list[float]], list[Detections]],
                     merge: Callable[[list[Detections]], Detections]) -> Detections:
    """One photo's faces from its planned passes — the tile-and-merge loop every tiling detector uses.
    ``detect_crops(crops, scales)`` gives one ``Detections`` per crop in crop pixels (``scales``: the scale each
    crop is to be shown at); each tile's faces are moved to photo pixels, those cut by an inner tile edge dropped,
    and ``merge(parts)`` (one part per tile, coarse passes first) joins them."""
    height, width = image.shape[:2]
    tiles = [(p.scale, tile) for p in passes for tile in p.tiles]
    found = detect_crops([np.ascontiguousarray(image[y1:y2, x1:x2]) for _, (x1, y1, x2, y2) in tiles],
                         [scale for scale, _ in tiles])
    return merge([drop_cut_faces(faces.scaled(1, 1, tile[0], tile[1]), tile, height, width)
                  for faces, (_, tile) in zip(found, tiles)])


def drop_cut_faces(detections: Detections, tile: tuple[int, int, int, int], height: int, width: int,
                   margin: float = EDGE_MARGIN_PX) -> Detections:
    """Remove faces touching an edge of ``tile`` that is not an edge of the photo (photo coordinates)."""
    x1, y1, x2, y2 = tile
    boxes = detections.boxes
    cut = torch.zeros(len(detections), dtype=torch.bool)
    if x1 > 0:
        cut |= boxes[:, 0] <= x1 + margin
    if y1 > 0:
        cut |= boxes[:, 1] <= y1 + margin
    if x2 < width:
        cut |= boxes[:, 2] >= x2 - margin
    if y2 < height:
        cut |= boxes[:, 3] >= y2 - margin
    return detections[~cut]
