"""YOLO face locations: cell-centre points of strides 8, 16 and 32 (``common.points``, which also decodes them
and assigns faces by SimOTA)."""
from __future__ import annotations

import torch

from common.points import point_grid
from detection.yolo.model import STRIDES

INPUT_MULTIPLE = max(STRIDES)  # inputs are padded to a multiple of the coarsest stride
CELL_CENTRE = 0.5


def anchor_points(height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cell centres (A, 2) in input pixels and their strides (A,), level by level, row-major within a level."""
    return point_grid(height, width, STRIDES, CELL_CENTRE)
