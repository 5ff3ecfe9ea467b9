"""MTCNN on whole photos: image pyramid → P-Net → R-Net → O-Net, every stage batched over boxes and images.

The algorithm, thresholds and pixel conventions are facenet-pytorch's (``detect_face``), so the results match
it (tests/test_mtcnn_parity.py); what differs is how the work is done:

- pyramid levels and 24/48-px crops are all read from one integral image per photo (``AreaSampler``), exact
  ``area`` interpolation at a cost per output pixel instead of per input pixel;
- photos of the same size go through P-Net together, level by level; all crops of all photos go through
  R-Net and O-Net in large batches; the nets run channels_last;
- optionally, large photos are shrunk first (``max_side``, ``min_face_fraction``): a 36-megapixel portrait
  does not need its 20-px "faces", which are mostly texture.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from common.errors import InputError
from common.config import ConfigError
from common.boxes import batched_nms
from common.checkpoint import model_state_from_file
from common.detections import Detections
from detection.mtcnn.model import ONET_SIZE, RNET_SIZE, ONet, PNet, RNet, load_pretrained_mtcnn, normalize
from detection.mtcnn.postprocess import (AreaSampler, calibrate, crop_regions, decode_landmarks,
                                         min_overlap_nms, pnet_boxes, pyramid_level_size, pyramid_scales,
                                         resize_area, square, working_scale)

DEFAULT_THRESHOLDS = (0.6, 0.7, 0.7)  # face probability to pass P-Net, R-Net, O-Net
PYRAMID_FACTOR = 0.709  # ~1/sqrt(2): each pyramid level looks for faces 1.41x larger
PNET_LEVEL_NMS_IOU = 0.5  # within one pyramid level of one photo
STAGE_NMS_IOU = 0.7  # P-Net boxes across levels, and R-Net boxes
WORK_MIN_FACE = 20  # with min_face_fraction: the smallest face that matters is shrunk to this many px
CROP_BATCH = 512  # R-Net/O-Net crops per forward pass
PNET_PIXEL_BUDGET = 1 << 22  # pixels of the largest pyramid level per P-Net pass (~0.5 GB of activations)


class MTCNNDetector:
    """Photo-in, ``Detections``-out MTCNN.

    ``min_face``: smallest face sought, photo px. ``thresholds``: face probability to pass each net.
    ``factor``: pyramid step. ``max_side``: shrink a photo so its longer side is at most this before the
    pyramid. ``min_face_fraction``: ignore faces smaller than this fraction of the photo's shorter side, and
    shrink the photo so the smallest face that matters is ``WORK_MIN_FACE`` px. Either way the smallest face
    sought in the shrunk photo is never below P-Net's 12 px. ``score_threshold``: final filter on the O-Net
    score (on top of ``thresholds[2]``). ``batch_size``: most photos of one size per P-Net pass (fewer when
    their largest pyramid level exceeds ``PNET_PIXEL_BUDGET`` pixels in all).
    """

    def __init__(self, pnet: PNet, rnet: RNet, onet: ONet, device: str | torch.device = "cpu",
                 min_face: float = 20, thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
                 factor: float = PYRAMID_FACTOR, max_side: int | None = None,
                 min_face_fraction: float | None = None, score_threshold: float | None = None,
                 batch_size: int = 16):
        if len(thresholds) != 3:
            raise ConfigError(f"thresholds must be three probabilities (P-Net, R-Net, O-Net), got {thresholds}")
        if min_face < 1 or not 0 < factor < 1:
            raise ConfigError(f"need min_face >= 1 and 0 < factor < 1, got min_face={min_face}, factor={factor}")
        if max_side is not None and max_side < 12:
            raise ConfigError(f"max_side must be at least 12 px (P-Net's window), got {max_side}")
        self.device = torch.device(device)
        # channels_last: P-Net ~1.6x and R-Net/O-Net 2-4x faster on CPU (max pooling above all)
        self.pnet, self.rnet, self.onet = (net.eval().to(self.device, memory_format=torch.channels_last)
                                           for net in (pnet, rnet, onet))
        self.min_face, self.thresholds, self.factor = float(min_face), tuple(thresholds), factor
        self.max_side, self.min_face_fraction = max_side, min_face_fraction
        self.score_threshold, self.batch_size = score_threshold, batch_size

    # -- stages -------------------------------------------------------------------------------------------
    def _propose(self, sampler: AreaSampler, sizes: list[tuple[int, int]], min_faces: list[float]):
        """P-Net over each photo's pyramid → (image_ids, square boxes) after calibration and NMS."""
        groups = defaultdict(list)  # photos sharing a size and min face share the pyramid: one batch
        for index, (size, min_face) in enumerate(zip(sizes, min_faces)):
            groups[(*size, min_face)].append(index)
        ids, boxes, scores, offsets = [], [], [], []
        for (height, width, min_face), members in groups.items():
            scales = pyramid_scales(height, width, min_face, self.factor)
            if not scales:
                continue
            largest = pyramid_level_size(height, width, scales[0])
            per_pass = max(1, min(self.batch_size, PNET_PIXEL_BUDGET // (largest[0] * largest[1])))
            for start in range(0, len(members), per_pass):
                members_chunk = members[start:start + per_pass]
                chunk = torch.tensor(members_chunk, device=self.device)
                for scale in scales:
                    pixels = sampler.resize(members_chunk, *pyramid_level_size(height, width, scale))  # (B, 3, h, w)
                    level_offsets, logits = self.pnet(normalize(pixels))  # (B, 4, h', w'), (B, 2, h', w')
                    probs = F.softmax(logits, dim=1)[:, 1]
                    local, level_boxes, level_scores, cell_offsets = pnet_boxes(level_offsets, probs, scale,
                                                                                self.thresholds[0])
                    keep = batched_nms(level_boxes, level_scores, local, PNET_LEVEL_NMS_IOU)
                    ids.append(chunk[local[keep]])
                    boxes.append(level_boxes[keep])
                    scores.append(level_scores[keep])
                    offsets.append(cell_offsets[keep])
        if not ids:
            return torch.zeros(0, dtype=torch.int64, device=self.device), torch.zeros(0, 4, device=self.device)
        ids, boxes, scores, offsets = (torch.cat(t) for t in (ids, boxes, scores, offsets))
        keep = batched_nms(boxes, scores, ids, STAGE_NMS_IOU)
        return ids[keep], square(calibrate(boxes[keep], offsets[keep], inclusive=False))

    @staticmethod
    def _drop_cropless(ids, boxes, heights, widths):
        """Drop boxes wholly outside their photo: they have no pixels to crop."""
        valid = crop_regions(boxes, heights[ids], widths[ids])[-1]
        return ids[valid], boxes[valid]

    @staticmethod
    def _crops(sampler, ids, boxes, heights, widths, size: int):
        """Each box's crop (clipped to its photo, stretched to ``size``) as chunks of normalised net input."""
        y0, y1, x0, x1, _ = crop_regions(boxes, heights[ids], widths[ids])
        for start in range(0, len(ids), CROP_BATCH):
            part = slice(start, start + CROP_BATCH)
            yield normalize(sampler.sample(ids[part], y0[part], y1[part], x0[part], x1[part], size, size))

    def _refine(self, sampler, ids, boxes, heights, widths):
        """R-Net on 24-px crops → (image_ids, square boxes)."""
        ids, boxes = self._drop_cropless(ids, boxes, heights, widths)
        if not len(ids):
            return ids, boxes
        outputs = [self.rnet(crops) for crops in self._crops(sampler, ids, boxes, heights, widths, RNET_SIZE)]
        offsets, logits = (torch.cat(t) for t in zip(*outputs))
        scores = F.softmax(logits, dim=1)[:, 1]
        passed = scores > self.thresholds[1]
        ids, boxes, scores, offsets = ids[passed], boxes[passed], scores[passed], offsets[passed]
        keep = batched_nms(boxes, scores, ids, STAGE_NMS_IOU)
        return ids[keep], square(calibrate(boxes[keep], offsets[keep], inclusive=True))

    def _output(self, sampler, ids, boxes, heights, widths):
        """O-Net on 48-px crops → (image_ids, boxes, scores, landmarks (K, 5, 2))."""
        ids, boxes = self._drop_cropless(ids, boxes, heights, widths)
        if not len(ids):
            return ids, boxes, boxes[:, 0], boxes.new_zeros(0, 5, 2)
        outputs = [self.onet(crops) for crops in self._crops(sampler, ids, boxes, heights, widths, ONET_SIZE)]
        offsets, points, logits = (torch.cat(t) for t in zip(*outputs))
        scores = F.softmax(logits, dim=1)[:, 1]
        passed = scores > self.thresholds[2]
        ids, boxes, scores = ids[passed], boxes[passed], scores[passed]
        offsets, points = offsets[passed], points[passed]
        landmarks = decode_landmarks(points, boxes)
        boxes = calibrate(boxes, offsets, inclusive=True)
        keep = min_overlap_nms(boxes, scores, ids)
        return ids[keep], boxes[keep], scores[keep], landmarks[keep]

    # -- public -------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def propose(self, image: np.ndarray, through: str = "pnet") -> torch.Tensor:
        """The square boxes (K, 4), photo px, that the cascade hands on after ``through`` (pnet → R-Net's inputs,
        rnet → O-Net's inputs) for one RGB uint8 photo at its own size: what hard-sample mining learns from."""
        if through not in ("pnet", "rnet"):
            raise ValueError(f"proposals come after pnet or rnet, not {through!r}")
        height, width = image.shape[:2]
        sampler = AreaSampler([image], self.device)
        ids, boxes = self._propose(sampler, [(height, width)], [self.min_face])
        if through == "rnet" and len(ids):
            heights = torch.tensor([height], device=self.device)
            widths = torch.tensor([width], device=self.device)
            ids, boxes = self._refine(sampler, ids, boxes, heights, widths)
        return boxes.float().cpu()

    @torch.inference_mode()
    def detect(self, images: Sequence[np.ndarray]) -> list[Detections]:
        """RGB uint8 (H, W, 3) photos → one ``Detections`` each, in photo pixels, by decreasing score."""
        images = list(images)
        for index, image in enumerate(images):
            if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                described = (f"{type(image).__name__} {getattr(image, 'dtype', '')} {getattr(image, 'shape', '')}")
                raise ValueError(f"MTCNNDetector.detect expects RGB uint8 (H, W, 3) numpy arrays; image {index} "
                                 f"is {described}")
        if not images:
            return []
        working, back_scales, min_faces = [], [], []
        for image in images:
            height, width = image.shape[:2]
            scale, min_face = working_scale(height, width, self.min_face, self.max_side, self.min_face_fraction,
                                            WORK_MIN_FACE)
            small = resize_area(image, scale) if scale < 1 else image
            working.append(small)
            back_scales.append((width / small.shape[1], height / small.shape[0]))
            min_faces.append(min_face)
        sizes = [image.shape[:2] for image in working]
        heights = torch.tensor([h for h, _ in sizes], device=self.device)
        widths = torch.tensor([w for _, w in sizes], device=self.device)
        sampler = AreaSampler(working, self.device)

        ids, boxes = self._propose(sampler, sizes, min_faces)
        if len(ids):
            ids, boxes = self._refine(sampler, ids, boxes, heights, widths)
        if len(ids):
            ids, boxes, scores, landmarks = self._output(sampler, ids, boxes, heights, widths)
        else:
            scores, landmarks = boxes[:, 0], boxes.new_zeros(0, 5, 2)
        if self.score_threshold is not None:
            passed = scores >= self.score_threshold
            ids, boxes, scores, landmarks = ids[passed], boxes[passed], scores[passed], landmarks[passed]

        ids, boxes, scores, landmarks = ids.cpu(), boxes.float().cpu(), scores.float().cpu(), landmarks.float().cpu()
        results = []
        for index, (scale_x, scale_y) in enumerate(back_scales):
            mine = ids == index
            detections = Detections(boxes[mine], scores[mine], landmarks[mine])
            results.append(detections if (scale_x, scale_y) == (1.0, 1.0) else detections.scaled(scale_x, scale_y))
        return results

    __call__ = detect


def load_mtcnn_weights(weights: str | Path | None) -> tuple[PNet, RNet, ONet]:
    """``None``: facenet-pytorch's weights. Otherwise a ``.pth`` holding ``{"pnet": ..., "rnet": ..., "onet": ...}``
    (each a state dict or a checkpoint of ours with a ``"model"`` entry), bare or inside our checkpoint's
    ``"model"``."""
    if weights is None:
        return load_pretrained_mtcnn()
    state = model_state_from_file(weights)
    missing = [net for net in ("pnet", "rnet", "onet") if not isinstance(state, dict) or net not in state]
    if missing:
        raise InputError(f"MTCNN weights {weights} must hold the keys pnet, rnet, onet (what MTCNN training "
                         f"writes); missing {', '.join(missing)}")
    nets = []
    for name, cls in (("pnet", PNet), ("rnet", RNet), ("onet", ONet)):
        net_state = state[name]
        if isinstance(net_state, dict) and "model" in net_state:
            net_state = net_state["model"]
        net = cls()
        net.load_state_dict(net_state)
        nets.append(net.eval())
    return tuple(nets)


def mtcnn_detector(weights: str | Path | None = None, device: str = "cpu", score_threshold: float | None = None,
                   min_face_px: float = 20, thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
                   factor: float = PYRAMID_FACTOR, max_side: int | None = None,
                   min_face_fraction: float | None = None, nms_iou: float | None = None,
                   batch_size: int = 16) -> MTCNNDetector:
    """MTCNN with facenet-pytorch's weights (``weights=None``) or ours; ``min_face_px``: the smallest face its
    image pyramid seeks (it does not tile: the pyramid covers every face size). ``nms_iou`` is accepted for the
    CLIs' sake and not used: MTCNN's three suppressions keep their own thresholds."""
    del nms_iou
    if min_face_px is None:
        raise ConfigError("MTCNN needs min_face_px: the smallest face (px) its image pyramid seeks, e.g. 20")
    pnet, rnet, onet = load_mtcnn_weights(weights)
    return MTCNNDetector(pnet, rnet, onet, device=device, min_face=min_face_px, thresholds=thresholds, factor=factor,
                         max_side=max_side, min_face_fraction=min_face_fraction, score_threshold=score_threshold,
                         batch_size=batch_size)
