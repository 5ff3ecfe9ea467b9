"""YuNet's face locations: the corner of every cell of strides 8, 16 and 32 (mmdet's ``MlvlPointGenerator``
with offset 0, which OpenCV's ``FaceDetectorYN`` decodes with too); decoding and SimOTA are
``common.points``'s."""
from __future__ import annotations

import torch

from common.points import point_grid
from detection.yunet.model import STRIDES

INPUT_MULTIPLE = max(STRIDES)  # inputs are padded to a multiple of the coarsest stride
CELL_CORNER = 0.0


def yunet_points(height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cell corners (A, 2) in input pixels and their strides (A,), level by level, row-major within a level."""
    return point_grid(height, width, STRIDES, CELL_CORNER)
