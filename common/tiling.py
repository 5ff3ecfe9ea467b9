"""Photo scaling for detectors: a photo resized by a factor, model input padded to a stride multiple, and zoomed,
overlapping tiles so a fixed-input detector also sees small faces in large photos.

At zoom ``z`` the photo is covered by square tiles of side ``max(H, W) / z`` overlapping by ``overlap``; zoom 1
is the whole photo. A face cut by a tile's inner edge is dropped from that tile: with enough overlap it lies
whole inside a neighbour, or a lower zoom sees it.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from common.config import ConfigError
from common.detections import Detections


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


def zoomed_tiles(height: int, width: int, zooms: Sequence[int], overlap: float = 0.25
                 ) -> list[tuple[int, tuple[int, int, int, int]]]:
    """``(zoom, (x1, y1, x2, y2))`` pixel tiles for every zoom level in the order given, each tile once."""
    if not zooms or any(zoom < 1 for zoom in zooms):
        raise ConfigError(f"tile_zooms must be whole numbers >= 1 (1 = the whole photo), got {list(zooms)}")
    if not 0 <= overlap < 1:
        raise ConfigError(f"tile overlap must lie in [0, 1), got {overlap}")
    tiles: dict[tuple[int, int, int, int], int] = {}
    for zoom in zooms:
        side = math.ceil(max(height, width) / zoom)
        step = side * (1 - overlap)

        def starts(extent: int) -> list[int]:
            if extent <= side:
                return [0]
            count = math.ceil((extent - side) / step) + 1
            return [min(round(i * step), extent - side) for i in range(count)]

        for y in starts(height):
            for x in starts(width):
                tiles.setdefault((x, y, min(x + side, width), min(y + side, height)), zoom)
    return [(zoom, tile) for tile, zoom in tiles.items()]


def make_tiles(height: int, width: int, zooms: Sequence[int], overlap: float = 0.25) -> list[tuple[int, int, int, int]]:
    """``(x1, y1, x2, y2)`` pixel tiles for every zoom level, whole photo first."""
    return [tile for _, tile in zoomed_tiles(height, width, zooms, overlap)]


def detect_on_tiles(image: np.ndarray, zooms: Sequence[int], overlap: float,
                    detect_crops: Callable[[list[np.ndarray], list[int]], list[Detections]],
                    merge: Callable[[list[Detections]], Detections]) -> Detections:
    """One photo's faces from its zoomed, overlapping tiles — the tile-and-merge loop every tiling detector uses.
    ``detect_crops(crops, zooms)`` gives one ``Detections`` per crop in crop pixels (``zooms``: each crop's zoom,
    for detectors that enlarge a tile by it); each tile's faces are moved to photo pixels, those cut by an inner
    tile edge dropped, and ``merge(parts)`` (one part per tile, in ``zoomed_tiles`` order) joins them."""
    height, width = image.shape[:2]
    tiles = zoomed_tiles(height, width, zooms, overlap)
    found = detect_crops([np.ascontiguousarray(image[y1:y2, x1:x2]) for _, (x1, y1, x2, y2) in tiles],
                         [zoom for zoom, _ in tiles])
    return merge([drop_cut_faces(faces.scaled(1, 1, tile[0], tile[1]), tile, height, width)
                  for faces, (_, tile) in zip(found, tiles)])


def drop_cut_faces(detections: Detections, tile: tuple[int, int, int, int], height: int, width: int,
                   margin: float = 2.0) -> Detections:
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
