"""Aligned chips made to look like small faces of a class photo: the detail a face of ``face_px`` px has left,
softened by a phone's blur, sensor noise and JPEG, then brought back to the chip's size as the aligner would.

Small-face training (``loss.distill`` in ``embedding.training``) shows the student these chips and asks it for the
embedding its teacher gives the clean chip.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms.functional import gaussian_blur

from common.detections import face_widths



def chip_face_width(template) -> float:
    """The width in chip px of the face an alignment template (5 points, eyes first) cuts."""
    return float(face_widths(np.asarray(template, dtype=np.float64)[None])[0])


def jpeg(chip: torch.Tensor, quality: int) -> np.ndarray:
    """(3, H, W) uint8 RGB chip JPEG-coded at ``quality`` and decoded, as a (3, H, W) uint8 array."""
    bgr = np.ascontiguousarray(chip.permute(1, 2, 0).numpy()[:, :, ::-1])
    ok, encoded = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("OpenCV could not encode a JPEG")
    return np.ascontiguousarray(cv2.imdecode(encoded, cv2.IMREAD_COLOR)[:, :, ::-1].transpose(2, 0, 1))


def degrade_chips(chips: torch.Tensor, face_px: torch.Tensor, chip_face_px: float, generator: torch.Generator,
                  blur_sigma: float = 0.8, noise: float = 3.0, jpeg_quality: tuple[int, int] = (60, 95)
                  ) -> torch.Tensor:
    """(B, 3, S, S) uint8 chips of faces ``chip_face_px`` wide, each shrunk (area) so its face is ``face_px[i]``
    px wide, blurred (sigma up to ``blur_sigma`` px of the small face), noised (std up to ``noise`` grey levels),
    JPEG-coded (quality drawn from ``jpeg_quality``) and brought back to S (bilinear). Chips whose face is already
    that small are left as they are."""
    size = chips.shape[-1]
    out = chips.clone()
    for index in range(len(chips)):
        scale = float(face_px[index]) / chip_face_px
        if scale >= 1:
            continue
        small_size = max(4, round(size * scale))
        small = F.interpolate(chips[index:index + 1].float(), size=(small_size, small_size), mode="area")
        sigma = float(torch.rand(1, generator=generator)) * blur_sigma
        if sigma > 0.1:
            small = gaussian_blur(small, kernel_size=2 * int(np.ceil(2 * sigma)) + 1, sigma=sigma)
        noise_std = float(torch.rand(1, generator=generator)) * noise
        small = small + torch.randn(small.shape, generator=generator) * noise_std
        quality = int(torch.randint(jpeg_quality[0], jpeg_quality[1] + 1, (1,), generator=generator))
        coded = torch.from_numpy(jpeg(small[0].clamp(0, 255).round().to(torch.uint8), quality))  # (3, s, s)
        out[index] = F.interpolate(coded[None].float(), size=(size, size), mode="bilinear",
                                   align_corners=False)[0].clamp(0, 255).round().to(torch.uint8)
    return out
