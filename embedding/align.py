"""Face alignment: warp a face so its 5 landmarks land on a fixed template, or crop its box with a margin.

The similarity transform (rotation, uniform scale, translation) is fitted by least squares over the five
points (Umeyama's closed form, reflection excluded); OpenCV's robust LMEDS estimator drifts by pixels when it
drops points out of five.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch

# Landmarks of a frontal face in a 112×112 chip (ArcFace/insightface template): image-left eye, image-right eye,
# nose tip, image-left mouth corner, image-right mouth corner — the order of ``common.detections``.
ARCFACE_TEMPLATE_112 = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                                 [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float64)


def scaled_template(size: int, base: np.ndarray = ARCFACE_TEMPLATE_112, base_size: int = 112) -> np.ndarray:
    """``base`` (defined for a ``base_size`` chip) for a ``size``×``size`` chip."""
    return np.asarray(base, dtype=np.float64) * (size / base_size)


def fit_similarity(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """(2, 3) matrix M of the least-squares similarity with ``M @ [x, y, 1] ≈ target`` for each source point."""
    source = np.asarray(source, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    source_mean, target_mean = source.mean(0), target.mean(0)
    source_centred, target_centred = source - source_mean, target - target_mean
    covariance = target_centred.T @ source_centred / len(source)  # (2, 2)
    u, singular, vt = np.linalg.svd(covariance)
    sign = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:  # exclude reflections
        sign[-1] = -1
    rotation = u @ np.diag(sign) @ vt
    variance = (source_centred ** 2).sum() / len(source)
    scale = (singular * sign).sum() / variance if variance > 0 else 1.0
    translation = target_mean - scale * rotation @ source_mean
    return np.hstack([scale * rotation, translation[:, None]])


def _as_numpy(points) -> np.ndarray:
    return points.detach().cpu().numpy() if isinstance(points, torch.Tensor) else np.asarray(points)


def align_faces(image: np.ndarray, landmarks, size: int, template: np.ndarray) -> np.ndarray:
    """(N, size, size, 3) uint8 chips from an (H, W, 3) uint8 photo and (N, 5, 2) landmarks in photo pixels;
    ``template`` is (5, 2) in chip pixels. Pixels outside the photo are black."""
    landmarks = _as_numpy(landmarks).reshape(-1, 5, 2)
    return warp_chips(image, [fit_similarity(points, template) for points in landmarks], size)


def warp_chips(image: np.ndarray, matrices, size: int, dlib_sampling: bool = False) -> np.ndarray:
    """(N, size, size, 3) uint8 chips of an (H, W, 3) uint8 photo through (N, 2, 3) photo → chip affines, with
    bilinear sampling; pixels outside the photo are black. A face more than twice the chip's size is first
    halved (Gaussian pyramid, on its own neighbourhood) until it is not, as dlib's extract_image_chip does:
    bilinear sampling of a photo shrunk 2× or more skips pixels and aliases. ``dlib_sampling``: as dlib's
    extract_image_chip, interpolated values are truncated to integers (not rounded) and a sample whose four
    neighbours are not all in the photo is black (not blended with black)."""
    matrices = np.asarray(matrices, dtype=np.float64).reshape(-1, 2, 3)
    chips = np.zeros((len(matrices), size, size, 3), dtype=np.uint8)
    corners = np.array([[0, 0, 1], [size, 0, 1], [0, size, 1], [size, size, 1]], dtype=np.float64)
    for i, matrix in enumerate(matrices):
        matrix = matrix.copy()
        chip_to_photo = np.linalg.inv(np.vstack([matrix, [0, 0, 1]]))[:2]
        footprint = corners @ chip_to_photo.T  # (4, 2) the chip's corners in the photo
        shrink = np.sqrt(abs(np.linalg.det(matrix[:, :2])))  # chip px per photo px
        halvings = int(np.floor(np.log2(1 / shrink))) if shrink <= 0.5 else 0
        pad = 2 ** (halvings + 2)
        x0, y0 = np.maximum(np.floor(footprint.min(0)).astype(int) - pad, 0)
        x1, y1 = np.minimum(np.ceil(footprint.max(0)).astype(int) + pad, [image.shape[1], image.shape[0]])
        if x1 <= x0 or y1 <= y0:
            continue  # the chip lies wholly outside the photo: black
        source = image[y0:y1, x0:x1]
        matrix[:, 2] += matrix[:, :2] @ [x0, y0]  # the same chip from the crop
        for _ in range(halvings):
            source = cv2.pyrDown(source)  # pixel (x, y) of the half-size image is (2x, 2y) of the source
            matrix[:, :2] *= 2
        if dlib_sampling:
            source = source.astype(np.float32)
        chip = cv2.warpAffine(source, matrix, (size, size), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        if dlib_sampling:
            # the crop reaches 4 px past the chip's footprint wherever the photo does, so a sample blended with
            # the border lies on the photo's edge
            inside = cv2.warpAffine(np.ones(source.shape[:2], np.float32), matrix, (size, size),
                                    flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
            chip = np.where(inside[..., None] > 0.999, np.clip(chip, 0, 255), 0)  # float → uint8 truncates
        chips[i] = chip
    return chips


def margin_crop_windows(boxes, size: int, margin: float, height: int, width: int) -> np.ndarray:
    """(N, 4) int xyxy photo windows that ``margin_crop`` resizes: each xyxy box widened by ``margin`` pixels *of
    the output chip* (half on each side), clipped to the ``width``×``height`` photo, truncated to integers."""
    boxes = _as_numpy(boxes).reshape(-1, 4).astype(np.float64)
    pad = margin * (boxes[:, 2:] - boxes[:, :2]) / (size - margin) / 2  # (N, 2): x, y
    low = np.maximum(boxes[:, :2] - pad, 0)
    high = np.minimum(boxes[:, 2:] + pad, [width, height])
    return np.hstack([low, high]).astype(np.int64)  # truncation towards zero, as int() in facenet-pytorch


def box_crop_landmarks(landmarks, windows: np.ndarray, size: int) -> np.ndarray:
    """(N, 5, 2) photo-px landmarks → where they land in ``margin_crop``'s ``size``×``size`` chips cut from the
    (N, 4) int ``windows`` of ``margin_crop_windows`` (each window stretched to the square independently in x, y)."""
    landmarks = _as_numpy(landmarks).reshape(-1, 5, 2).astype(np.float64)
    windows = np.asarray(windows, dtype=np.float64).reshape(-1, 4)
    stretch = size / (windows[:, 2:] - windows[:, :2])  # (N, 2): chip px per photo px in x, y
    return (landmarks - windows[:, None, :2]) * stretch[:, None, :]


def margin_crop(image: np.ndarray, boxes, size: int, margin: float = 0.0) -> np.ndarray:
    """facenet-pytorch's box-only crop (``extract_face`` on an array): widen each xyxy box by ``margin`` pixels
    *of the output chip*, clip it to the photo, and resize it to ``size``×``size`` with area interpolation.
    (N, size, size, 3) uint8."""
    height, width = image.shape[:2]
    windows = margin_crop_windows(boxes, size, margin, height, width)
    chips = np.zeros((len(windows), size, size, 3), dtype=np.uint8)
    for i, (left, top, right, bottom) in enumerate(windows):
        if right <= left or bottom <= top:
            raise ValueError(f"box {_as_numpy(boxes).reshape(-1, 4)[i].tolist()} lies outside the "
                             f"{width}x{height} photo")
        chips[i] = cv2.resize(image[top:bottom, left:right], (size, size), interpolation=cv2.INTER_AREA)
    return chips
