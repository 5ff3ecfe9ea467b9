"""MTCNN's box arithmetic and crop sampling, vectorised over every box of every image.

The conventions are those of the original MTCNN (and facenet-pytorch, whose results we match):

- P-Net cell (x, y) at pyramid scale s is the box ``floor((2x + 1) / s), floor((2y + 1) / s)`` to
  ``floor((2x + 12) / s), floor((2y + 12) / s)``; its offsets are fractions of ``x2 - x1``.
- R-Net and O-Net offsets and landmarks are fractions of the inclusive side ``x2 - x1 + 1``.
- Boxes are made square around their centre before each crop (``square``).
- A crop covers rows ``max(trunc(y1), 1) - 1`` to ``min(trunc(y2), H)`` (exclusive) and likewise columns: it is
  clipped to the photo, not zero-padded, and resized to 24 or 48 px with PyTorch's ``area`` interpolation
  (adaptive average pooling), so a clipped crop is stretched.
- The last stage suppresses boxes by intersection over the *smaller* area (inclusive pixel sides).

``AreaSampler`` computes that area interpolation for the pyramid levels and all crops at once from integral
images: the cost is per output pixel, and the sums are exact integers, so the values equal
``F.interpolate(mode="area")`` bit for bit.
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np
import torch

PNET_STRIDE = 2
PNET_CELL = 12  # P-Net's receptive field: the smallest face it sees, in pixels of a pyramid level
MIN_OVERLAP_NMS_IOU = 0.7  # O-Net stage: intersection over the smaller box

# int32 integral images are exact while the whole-image sum of one channel fits; beyond that, float64
# (exact for integers below 2**53).
_INT32_PIXEL_LIMIT = (2 ** 31 - 1) // 255


def pyramid_scales(height: int, width: int, min_face: float, factor: float) -> list[float]:
    """Scales at which P-Net's 12-px window spans faces of ``min_face``, ``min_face / factor``, ... px, down to
    the photo's shorter side."""
    scale = PNET_CELL / min_face
    shorter = min(height, width) * scale
    scales = []
    while shorter >= PNET_CELL:
        scales.append(scale)
        scale *= factor
        shorter *= factor
    return scales


def pyramid_level_size(height: int, width: int, scale: float) -> tuple[int, int]:
    return int(height * scale + 1), int(width * scale + 1)


def area_bins(in_sizes: torch.Tensor, out_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Adaptive-average-pooling bins: for sizes (N,) → start, end (N, out_size), end exclusive.

    Bin i spans ``floor(i * n / out)`` to ``ceil((i + 1) * n / out)``, PyTorch's rule (bins overlap when
    ``n`` is not a multiple of ``out``, and repeat pixels when upsampling)."""
    i = torch.arange(out_size, device=in_sizes.device)
    n = in_sizes[:, None]
    start = torch.div(i * n, out_size, rounding_mode="floor")
    end = -torch.div(-(i + 1) * n, out_size, rounding_mode="floor")
    return start, end


class AreaSampler:
    """Area-resampled regions of a list of RGB uint8 photos, read from their integral images."""

    def __init__(self, images: Sequence[np.ndarray], device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        exact_int32 = all(image.shape[0] * image.shape[1] <= _INT32_PIXEL_LIMIT for image in images)
        depth = cv2.CV_32S if exact_int32 else cv2.CV_64F
        flat, starts, widths = [], [], []
        start = 0
        for image in images:
            integral = cv2.integral(np.ascontiguousarray(image), sdepth=depth)  # (H + 1, W + 1, 3)
            flat.append(torch.from_numpy(integral.reshape(-1, 3)))
            starts.append(start)
            widths.append(integral.shape[1])
            start += integral.shape[0] * integral.shape[1]
        self.flat = (flat[0] if len(flat) == 1 else torch.cat(flat)).to(self.device)  # (sum (H + 1)(W + 1), 3)
        self.starts = torch.tensor(starts, dtype=torch.int64, device=self.device)
        self.widths = torch.tensor(widths, dtype=torch.int64, device=self.device)
        self.sizes = [image.shape[:2] for image in images]

    def resize(self, image_ids: Sequence[int], out_height: int, out_width: int) -> torch.Tensor:
        """Whole photos ``image_ids`` (all of one size) area-resized → (B, 3, out_height, out_width) float32
        pixel means, channels_last. Separable: whole rows of the integral images, then columns."""
        height, width = self.sizes[image_ids[0]]
        if any(self.sizes[i] != (height, width) for i in image_ids):
            raise ValueError("AreaSampler.resize takes photos of one size per call")
        area = (height + 1) * (width + 1)
        first = int(image_ids[0])
        if list(image_ids) == list(range(first, first + len(image_ids))):  # adjacent in flat: a view
            start = int(self.starts[first])
            integrals = self.flat[start:start + area * len(image_ids)].view(len(image_ids), height + 1, width + 1, 3)
        else:
            integrals = torch.stack([self.flat[int(self.starts[i]):int(self.starts[i]) + area] for i in image_ids])
            integrals = integrals.view(len(image_ids), height + 1, width + 1, 3)
        row_start, row_end = area_bins(torch.tensor([height], device=self.device), out_height)
        col_start, col_end = area_bins(torch.tensor([width], device=self.device), out_width)
        count = len(image_ids)
        integrals = integrals.view(count, height + 1, (width + 1) * 3)
        rows = integrals.index_select(1, row_end[0])  # (B, oh, (W + 1) * 3): whole rows, memcpy
        rows -= integrals.index_select(1, row_start[0])
        rows = rows.view(count * out_height, width + 1, 3)  # index_select is fastest on 3-d here
        sums = rows.index_select(1, col_end[0])  # (B * oh, ow, 3)
        sums -= rows.index_select(1, col_start[0])
        sums = sums.view(count, out_height, out_width, 3)
        return self._means(sums, row_end[0] - row_start[0], col_end[0] - col_start[0])

    @staticmethod
    def _means(sums: torch.Tensor, bin_heights: torch.Tensor, bin_widths: torch.Tensor) -> torch.Tensor:
        """(B, oh, ow, 3) exact bin sums → means, (B, 3, oh, ow) channels_last. Divides by the bin height, then
        its width, as adaptive_avg_pool2d does, so the rounding is identical."""
        means = sums.float()  # exact: bin sums < 2**24
        means.div_(bin_heights.float().reshape(-1, means.shape[1], 1, 1))
        means.div_(bin_widths.float().reshape(-1, 1, means.shape[2], 1))
        return means.permute(0, 3, 1, 2)

    def sample(self, image_ids: torch.Tensor, y0: torch.Tensor, y1: torch.Tensor, x0: torch.Tensor,
               x1: torch.Tensor, out_height: int, out_width: int) -> torch.Tensor:
        """Regions rows [y0, y1) × cols [x0, x1) of images ``image_ids`` (all (N,), non-empty, inside the
        image) → (N, 3, out_height, out_width) float32 pixel means, channels_last."""
        row_start, row_end = area_bins(y1 - y0, out_height)  # (N, oh)
        col_start, col_end = area_bins(x1 - x0, out_width)  # (N, ow)
        width = self.widths[image_ids][:, None, None]
        base = self.starts[image_ids][:, None, None]
        top = base + (row_start + y0[:, None])[:, :, None] * width  # (N, oh, 1)
        bottom = base + (row_end + y0[:, None])[:, :, None] * width
        left = (col_start + x0[:, None])[:, None, :]  # (N, 1, ow)
        right = (col_end + x0[:, None])[:, None, :]
        flat = self.flat
        sums = flat.index_select(0, (bottom + right).reshape(-1))
        sums -= flat.index_select(0, (top + right).reshape(-1))
        sums -= flat.index_select(0, (bottom + left).reshape(-1))
        sums += flat.index_select(0, (top + left).reshape(-1))
        sums = sums.view(len(image_ids), out_height, out_width, 3)
        return self._means(sums, row_end - row_start, col_end - col_start)


def pnet_boxes(box_offsets: torch.Tensor, face_probs: torch.Tensor, scale: float, threshold: float):
    """P-Net outputs of one pyramid level (B, 4, h, w), (B, h, w) → cells with ``prob >= threshold`` as
    ``image_ids (K,), boxes (K, 4) photo px, scores (K,), offsets (K, 4)``."""
    mask = face_probs >= threshold
    image_ids, ys, xs = mask.nonzero(as_tuple=True)
    scores = face_probs[image_ids, ys, xs]
    offsets = box_offsets.permute(0, 2, 3, 1)[image_ids, ys, xs]  # (K, 4)
    cells = torch.stack([xs, ys], dim=1).to(box_offsets.dtype) * PNET_STRIDE  # (K, 2) level px
    top_left = ((cells + 1) / scale).floor()
    bottom_right = ((cells + PNET_CELL) / scale).floor()
    return image_ids, torch.cat([top_left, bottom_right], dim=1), scores, offsets


def calibrate(boxes: torch.Tensor, offsets: torch.Tensor, inclusive: bool) -> torch.Tensor:
    """Shift each side by its offset times the box side (``x2 - x1``, plus 1 when ``inclusive``)."""
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    if inclusive:
        widths, heights = widths + 1, heights + 1
    sides = torch.stack([widths, heights, widths, heights], dim=1)
    return boxes + offsets * sides


def square(boxes: torch.Tensor) -> torch.Tensor:
    """Each box grown along its shorter side to a square with the same centre."""
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    sides = torch.maximum(widths, heights)
    x1 = boxes[:, 0] + widths * 0.5 - sides * 0.5
    y1 = boxes[:, 1] + heights * 0.5 - sides * 0.5
    return torch.stack([x1, y1, x1 + sides, y1 + sides], dim=1)


def crop_regions(boxes: torch.Tensor, heights: torch.Tensor, widths: torch.Tensor):
    """Pixel region of each box's crop, clipped to its photo (``heights``/``widths`` (K,) of the photo each
    box is in) → ``y0, y1, x0, x1`` (K,) int64 (end exclusive) and a mask of non-empty regions."""
    corners = boxes.trunc().to(torch.int64)
    x0 = corners[:, 0].clamp(min=1) - 1
    y0 = corners[:, 1].clamp(min=1) - 1
    x1 = torch.minimum(corners[:, 2], widths)
    y1 = torch.minimum(corners[:, 3], heights)
    valid = (x1 > x0) & (y1 > y0)
    return y0, y1, x0, x1, valid


def decode_landmarks(points: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """O-Net's (K, 10) relative landmarks (5 x's, 5 y's) in its input boxes → (K, 5, 2) photo px."""
    widths = (boxes[:, 2] - boxes[:, 0] + 1)[:, None]
    heights = (boxes[:, 3] - boxes[:, 1] + 1)[:, None]
    xs = widths * points[:, :5] + boxes[:, 0:1] - 1
    ys = heights * points[:, 5:] + boxes[:, 1:2] - 1
    return torch.stack([xs, ys], dim=2)


def min_overlap_nms(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor,
                    threshold: float = MIN_OVERLAP_NMS_IOU) -> torch.Tensor:
    """Greedy suppression within each group where intersection over the *smaller* box exceeds ``threshold``
    (sides counted inclusively, +1 px), MTCNN's last step: it also removes a box nested in a better one,
    which IoU-NMS keeps. Returns kept indices by decreasing score."""
    order = torch.argsort(scores, descending=True)
    b = boxes[order].cpu().numpy()
    g = groups[order].cpu().numpy()
    areas = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
    inter_w = np.maximum(0.0, np.minimum(b[:, None, 2], b[None, :, 2]) - np.maximum(b[:, None, 0], b[None, :, 0]) + 1)
    inter_h = np.maximum(0.0, np.minimum(b[:, None, 3], b[None, :, 3]) - np.maximum(b[:, None, 1], b[None, :, 1]) + 1)
    overlap = inter_w * inter_h / np.minimum(areas[:, None], areas[None, :])
    suppresses = (overlap > threshold) & (g[:, None] == g[None, :])  # (K, K)
    removed = np.zeros(len(b), dtype=bool)
    keep = []
    for i in range(len(b)):  # one step per kept box, not per candidate pair
        if removed[i]:
            continue
        keep.append(i)
        removed |= suppresses[i]
    return order[torch.as_tensor(keep, dtype=torch.int64, device=order.device)]


def working_scale(height: int, width: int, min_face: float, max_side: int | None,
                  min_face_fraction: float | None, work_min_face: float) -> tuple[float, float]:
    """How much to shrink a photo before the pyramid, and the smallest face to seek at that size.

    The smallest face that matters is ``max(min_face, min_face_fraction * shorter side)`` photo px. With
    ``min_face_fraction`` the photo is shrunk so that face is ``work_min_face`` px; ``max_side`` caps the longer
    side. Returns ``(scale <= 1, min face in working px >= 12)``."""
    smallest = float(min_face)
    scale = 1.0
    if min_face_fraction is not None:
        smallest = max(smallest, min_face_fraction * min(height, width))
        scale = min(scale, work_min_face / smallest)
    if max_side is not None:
        scale = min(scale, max_side / max(height, width))
    return scale, max(float(PNET_CELL), smallest * scale) if scale < 1 else smallest


def resize_area(image: np.ndarray, scale: float) -> np.ndarray:
    """Shrink an RGB uint8 photo by ``scale`` (< 1) with pixel-area averaging (no aliasing)."""
    height, width = image.shape[:2]
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(np.ascontiguousarray(image), size, interpolation=cv2.INTER_AREA)


__all__ = ["AreaSampler", "area_bins", "calibrate", "crop_regions", "decode_landmarks", "min_overlap_nms",
           "pnet_boxes", "pyramid_level_size", "pyramid_scales", "resize_area", "square", "working_scale"]
