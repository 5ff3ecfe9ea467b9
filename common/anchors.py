"""One SSD-style anchor generator for BlazeFace (MediaPipe's rules) and RetinaFace (min-size lists).

Anchors come out as float32 ``cxcywh`` pixels, ordered level by level, then row-major over the feature map
(y, then x), then by anchor within a cell — the order the detection heads emit their predictions in.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch


@dataclass(frozen=True)
class AnchorLevel:
    """One feature map: its stride in pixels and the (width, height) in pixels of each anchor per cell."""

    stride: int
    sizes: tuple[tuple[float, float], ...]


class AnchorGenerator:
    def __init__(self, levels: Sequence[AnchorLevel], offset: float = 0.5):
        self.levels = tuple(levels)
        self.offset = offset

    @property
    def anchors_per_cell(self) -> list[int]:
        return [len(level.sizes) for level in self.levels]

    def num_anchors(self, image_height: int, image_width: int) -> int:
        return sum(math.ceil(image_height / lv.stride) * math.ceil(image_width / lv.stride) * len(lv.sizes)
                   for lv in self.levels)

    def __call__(self, image_height: int, image_width: int, device=None) -> torch.Tensor:
        """(A, 4) cxcywh pixel anchors for an input of this size."""
        per_level = []
        for level in self.levels:
            rows, cols = math.ceil(image_height / level.stride), math.ceil(image_width / level.stride)
            # MediaPipe places centres at (i + offset) / cells of the input, which equals (i + offset) * stride
            # when the input is a multiple of the stride.
            ys = (torch.arange(rows, dtype=torch.float32, device=device) + self.offset) * (image_height / rows)
            xs = (torch.arange(cols, dtype=torch.float32, device=device) + self.offset) * (image_width / cols)
            sizes = torch.tensor(level.sizes, dtype=torch.float32, device=device)  # (S, 2)
            cy, cx = torch.meshgrid(ys, xs, indexing="ij")  # (rows, cols) each
            centres = torch.stack([cx, cy], dim=-1)[:, :, None, :].expand(rows, cols, len(sizes), 2)
            wh = sizes[None, None].expand(rows, cols, len(sizes), 2)
            per_level.append(torch.cat([centres, wh], dim=-1).reshape(-1, 4))  # (rows * cols * S, 4)
        return torch.cat(per_level)

    @classmethod
    def from_min_sizes(cls, strides: Sequence[int], min_sizes: Sequence[Sequence[float]],
                       offset: float = 0.5) -> "AnchorGenerator":
        """RetinaFace style: square anchors of the given pixel sizes per level."""
        return cls([AnchorLevel(s, tuple((float(m), float(m)) for m in sizes)) for s, sizes in zip(strides, min_sizes)],
                   offset)

    @classmethod
    def mediapipe(cls, input_size: int, strides: Sequence[int], min_scale: float, max_scale: float,
                  aspect_ratios: Sequence[float] = (1.0,), interpolated_scale_aspect_ratio: float = 1.0,
                  offset: float = 0.5, fixed_anchor_size: bool = False) -> "AnchorGenerator":
        """MediaPipe's ``SsdAnchorsCalculator``: consecutive layers of equal stride share one feature map.

        With ``fixed_anchor_size`` every anchor is input-sized, which is how MediaPipe decodes BlazeFace; without
        it the anchors carry their true scales, which is what IoU matching needs.
        """
        num_layers = len(strides)

        def scale_of(layer: int) -> float:
            if num_layers == 1:
                return (min_scale + max_scale) / 2
            return min_scale + (max_scale - min_scale) * layer / (num_layers - 1)

        levels = []
        layer = 0
        while layer < num_layers:
            sizes = []
            same = layer
            while same < num_layers and strides[same] == strides[layer]:
                scale = scale_of(same)
                for ratio in aspect_ratios:
                    sizes.append((scale * math.sqrt(ratio), scale / math.sqrt(ratio)))
                if interpolated_scale_aspect_ratio > 0:
                    next_scale = 1.0 if same == num_layers - 1 else scale_of(same + 1)
                    interpolated = math.sqrt(scale * next_scale)
                    ratio = interpolated_scale_aspect_ratio
                    sizes.append((interpolated * math.sqrt(ratio), interpolated / math.sqrt(ratio)))
                same += 1
            if fixed_anchor_size:
                sizes = [(1.0, 1.0)] * len(sizes)
            levels.append(AnchorLevel(strides[layer], tuple((w * input_size, h * input_size) for w, h in sizes)))
            layer = same
        return cls(levels, offset)


# MediaPipe's face_detection_short_range / back-camera graph options.
BLAZEFACE_ANCHOR_OPTIONS = {
    "front": dict(input_size=128, strides=(8, 16, 16, 16), min_scale=0.1484375, max_scale=0.75),
    "back": dict(input_size=256, strides=(16, 32, 32, 32), min_scale=0.15625, max_scale=0.75),
    # the full-range model: one 48×48 level, one anchor per cell (no interpolated scale)
    "full": dict(input_size=192, strides=(4,), min_scale=0.1484375, max_scale=0.75,
                 interpolated_scale_aspect_ratio=0.0),
}
