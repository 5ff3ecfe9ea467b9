"""dlib's 5-point face landmarker and the chip dlib's face-recognition network was trained on.

dlib's ResNet (``embedding.dlib_resnet``) was trained on chips that ``dlib.get_face_chip(size=150, padding=0.25)``
cuts around the 5 points of dlib's own landmarker (``shape_predictor_5_face_landmarks.dat``, shipped by
face-recognition-models): the outer and inner corners of both eyes and the base of the nose. Aligning another
detector's points (MTCNN's eye centres, nose tip and mouth corners) to an average template reproduces that chip
only on average; on LFW View 1 (DevTest) the network scores 98.7 % that way and 98.8 % on chips cut from dlib's own
points, which keeps them the default (View 2, reported once: 98.77 and 99.05 %)
(``LandmarkerAlignment``: MTCNN finds the face, dlib's landmarker places the points, and the chip is cut exactly as
dlib cuts it: points rounded to whole pixels, values truncated).

The landmarker is an ensemble of regression trees (Kazemi & Sullivan, CVPR 2014; dlib/image_processing/
shape_predictor.h), read here from dlib's serialisation into numpy and run over many faces at once:

- a face rectangle maps the unit square to photo pixels; the shape starts as the mean shape in that square;
- each of 15 cascades reads 800 grey pixels, each at an offset (``deltas``) from one point of the current shape
  (``anchors``), the offset turned and scaled by the similarity from the mean shape to the current one; pixels
  outside the photo read 0; grey is the integer mean of R, G and B, as dlib's rgb → grey;
- each of the cascade's 500 depth-4 trees compares two of those pixels per split (left when
  ``pixel[a] - pixel[b] > threshold``) and adds its leaf's shape offset.

File layout (after dlib's version 1): the initial shape (a 2P×1 matrix, x then y per point), the forests (a vector
per cascade of trees, each a vector of splits ``(a, b, threshold)`` in breadth-first order and a vector of leaf
matrices), the anchors (a vector of indices per cascade) and the deltas (a vector of (x, y) per cascade).
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from embedding.align import fit_similarity, warp_chips
from embedding.dlib_serial import DlibFormatError, DlibReader, packaged_model_file, read_dat
from embedding.embedder import Alignment, file_sha256

LANDMARKER_FILE = "shape_predictor_5_face_landmarks.dat"
# dlib's get_face_chip_details: where its 5 points go in the unit face square (before padding), in the order
# the 5-point landmarker returns them (image-right eye outer, inner corner, image-left eye outer, inner corner,
# nose base).
DLIB_CHIP_POINTS = np.array([[0.8595674595992, 0.2134981538014], [0.6460604764104, 0.2289674387677],
                             [0.1205750620789, 0.2137274526848], [0.3340850613712, 0.2290642403242],
                             [0.4901123135679, 0.6277975316475]])
DLIB_CHIP_PADDING = 0.25  # dlib.get_face_chip's default, which compute_face_descriptor uses
# Where dlib's HOG face detector puts its face rectangle (left, top, right, bottom) relative to MTCNN's 5 points,
# in the chip of MTCNN's points aligned to DLIB_TEMPLATE_150: the mean over 399 LFW photos (std 7 px per side;
# ``python -m bench.derive_dlib_template --images 600 --derive 400``). The landmarker was trained on such
# rectangles, so it is seeded from one.
SEED_RECT_150 = (3.82, 2.82, 134.87, 140.65)
DEFAULT_CACHE_DIR = Path("~/.cache/facepipe/landmarkers")


def _similarity_2x2(source: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """(N, 2, 2) linear part of the least-squares similarity from ``source`` (P, 2) to each of ``targets``
    (N, P, 2): ``[[a, -b], [b, a]]`` (dlib's find_similarity_transform, as the landmarker uses it)."""
    source = source - source.mean(0)
    targets = targets - targets.mean(1, keepdims=True)
    variance = (source ** 2).sum()
    a = (targets * source).sum((1, 2)) / variance  # (N,)
    b = (source[:, 0] * targets[..., 1] - source[:, 1] * targets[..., 0]).sum(1) / variance  # (N,)
    return np.stack([np.stack([a, -b], -1), np.stack([b, a], -1)], 1)


@dataclass(frozen=True, eq=False)
class ShapePredictor:
    """A dlib regression-tree landmarker: C cascades of T trees with S splits and S + 1 leaves, F feature pixels
    per cascade, P points."""

    initial_shape: np.ndarray  # (P, 2) float32, in the face rectangle's unit square
    split_pixels: np.ndarray  # (C, T, S, 2) int64: the two feature pixels each split compares
    split_thresholds: np.ndarray  # (C, T, S) float32
    leaf_values: np.ndarray  # (C, T, S + 1, P, 2) float32: shape offsets
    anchors: np.ndarray  # (C, F) int64: the shape point each feature pixel hangs off
    deltas: np.ndarray  # (C, F, 2) float32: its offset from that point, in the mean shape's frame
    file_hash: str = field(default="")

    @property
    def num_points(self) -> int:
        return len(self.initial_shape)

    def __call__(self, image: np.ndarray, rects) -> np.ndarray:
        """(N, P, 2) float64 points in photo px for an (H, W, 3) RGB uint8 photo and (N, 4) face rectangles
        ``(left, top, right, bottom)`` in dlib's convention (the unit square's corners land on those pixels)."""
        rects = np.asarray(rects, dtype=np.float64).reshape(-1, 4)
        height, width = image.shape[:2]
        origin, extent = rects[:, None, :2], rects[:, None, 2:] - rects[:, None, :2]  # (N, 1, 2) each
        shape = np.broadcast_to(self.initial_shape, (len(rects),) + self.initial_shape.shape).copy()  # (N, P, 2)
        cascades, trees, splits = self.split_thresholds.shape
        # each cascade's trees side by side, so a (N, T) array of nodes indexes them all at once
        firsts = self.split_pixels[..., 0].reshape(cascades, trees * splits)  # (C, T·S)
        seconds = self.split_pixels[..., 1].reshape(cascades, trees * splits)  # (C, T·S)
        thresholds = self.split_thresholds.reshape(cascades, trees * splits)  # (C, T·S)
        leaves = self.leaf_values.reshape(cascades, trees * (splits + 1), -1, 2)  # (C, T·(S+1), P, 2)
        split_start, leaf_start = np.arange(trees) * splits, np.arange(trees) * (splits + 1)  # (T,) each
        for cascade in range(cascades):
            turn = _similarity_2x2(self.initial_shape, shape).astype(np.float32)  # (N, 2, 2)
            offsets = self.deltas[cascade] @ turn.transpose(0, 2, 1)  # (F, 2) @ (N, 2, 2) → (N, F, 2)
            normalised = offsets + shape[:, self.anchors[cascade]]  # (N, F, 2)
            pixels = np.floor(origin + normalised * extent + 0.5).astype(np.int64)  # dlib rounds to the nearest px
            inside = ((pixels[..., 0] >= 0) & (pixels[..., 0] < width)
                      & (pixels[..., 1] >= 0) & (pixels[..., 1] < height))
            rgb = image[pixels[..., 1].clip(0, height - 1), pixels[..., 0].clip(0, width - 1)]  # (N, F, 3)
            grey = rgb.astype(np.int32).sum(-1) // 3  # dlib's rgb → grey, only where the trees look
            values = np.where(inside, grey, 0).astype(np.float32)  # (N, F)
            node = np.zeros((len(rects), trees), dtype=np.int64)  # (N, T)
            while node.min() < splits:  # complete trees: every path is equally deep
                at = split_start + node  # (N, T) into this cascade's splits
                difference = (np.take_along_axis(values, firsts[cascade][at], 1)
                              - np.take_along_axis(values, seconds[cascade][at], 1))
                node = 2 * node + np.where(difference > thresholds[cascade][at], 1, 2)
            shape = shape + leaves[cascade][leaf_start + node - splits].sum(1)  # (N, T, P, 2) → (N, P, 2)
        return origin + shape.astype(np.float64) * extent


def _integers(data: bytes, reader: DlibReader) -> np.ndarray:
    """Every dlib integer of ``data`` in order: a shape predictor is nothing else (its floats are pairs of them,
    mantissa and exponent). (K,) int64."""
    values, offset, end, from_bytes = [], 0, len(data), int.from_bytes
    append = values.append
    while offset < end:
        control = data[offset]
        size = control & 0x0F
        if size == 0 or size > 8 or control & 0x70 or offset + size >= end:
            reader.offset = offset
            raise reader.error(f"invalid integer control byte 0x{control:02x}" if offset + size < end
                               else "file ends early")
        value = from_bytes(data[offset + 1:offset + 1 + size], "little")
        append(-value if control & 0x80 else value)
        offset += 1 + size
    return np.array(values, dtype=np.int64)


def _reals(pairs: np.ndarray) -> np.ndarray:
    """float32 values of (..., 2) (mantissa, exponent) integer pairs, dlib's float_details."""
    mantissa, exponent = pairs[..., 0], pairs[..., 1]
    values = np.ldexp(mantissa.astype(np.float64), np.clip(exponent, -1100, 1100).astype(np.int32))
    values = np.where(exponent == DlibReader.FLOAT_INF, np.inf, values)
    values = np.where(exponent == DlibReader.FLOAT_NINF, -np.inf, values)
    return np.where(exponent == DlibReader.FLOAT_NAN, np.nan, values).astype(np.float32)


class _Tokens:
    """A cursor over a shape predictor's integers."""

    def __init__(self, values: np.ndarray, reader: DlibReader):
        self.values, self.reader, self.index = values, reader, 0

    def take(self, count: int) -> np.ndarray:
        if count < 0 or self.index + count > len(self.values):
            raise self.reader.error(f"{count} more values wanted at value {self.index} of {len(self.values)}")
        chunk = self.values[self.index:self.index + count]
        self.index += count
        return chunk

    def count(self, limit: int, what: str) -> int:
        value = int(self.take(1)[0])
        if not 0 <= value <= limit:
            raise self.reader.error(f"implausible {what} count {value} at value {self.index - 1}")
        return value


def load_shape_predictor(path: str | Path, cache_dir: str | Path | None = DEFAULT_CACHE_DIR) -> ShapePredictor:
    """``read_shape_predictor``, kept as arrays in ``cache_dir`` (keyed by the file's SHA-256) so that only the
    first load parses (seconds: the file is 3 M variable-length integers); ``None``: always parse. A cache that
    cannot be written is skipped."""
    path = Path(path)
    if cache_dir is None:
        return read_shape_predictor(path)
    digest = file_sha256(path)
    cached = Path(cache_dir).expanduser() / f"{digest[:24]}.npz"
    names = [f.name for f in fields(ShapePredictor) if f.name != "file_hash"]
    try:
        with np.load(cached) as arrays:
            return ShapePredictor(*(arrays[name] for name in names), file_hash=digest)
    except (OSError, KeyError, ValueError):
        pass  # not cached yet, or unreadable: parse again
    predictor = read_shape_predictor(path, file_hash=digest)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial = cached.with_suffix(f".{os.getpid()}.partial.npz")
        np.savez(partial, **{name: getattr(predictor, name) for name in names})
        os.replace(partial, cached)
    except OSError as error:
        warnings.warn(f"could not cache the parsed landmarker in {cached.parent} ({error}); it is parsed each run")
    return predictor


def read_shape_predictor(path: str | Path, file_hash: str | None = None) -> ShapePredictor:
    """Parse dlib's ``shape_predictor`` serialisation (``.dat`` or ``.dat.bz2``) into a ``ShapePredictor``;
    ``file_hash``: the file's SHA-256 when the caller has it already."""
    path = Path(path)
    data = read_dat(path)
    reader = DlibReader(data, path, f"a dlib shape predictor (such as {LANDMARKER_FILE})")
    tokens = _Tokens(_integers(data, reader), reader)
    if tokens.take(1)[0] != 1:
        raise reader.error("not a version-1 shape_predictor")
    rows, columns = np.abs(tokens.take(2))
    if columns != 1 or rows % 2:
        raise reader.error(f"an initial shape of {rows}x{columns} (a column of x, y pairs expected)")
    initial = _reals(tokens.take(2 * rows).reshape(-1, 2)).reshape(-1, 2)  # (P, 2)
    leaf_width = 2 + 2 * rows  # each leaf: its two dimensions, then rows (mantissa, exponent) pairs
    split_pixels, thresholds, leaf_values = [], [], []
    for _ in range(tokens.count(1000, "cascade")):
        trees = tokens.count(100_000, "tree")
        # a cascade is read as one block of equal trees: split count, splits (a, b, threshold), leaf count, leaves
        splits = int(tokens.values[tokens.index]) if trees else 0
        leaves = int(tokens.values[min(tokens.index + 1 + 4 * splits, len(tokens.values) - 1)]) if trees else 0
        width = 2 + 4 * splits + leaves * leaf_width
        block = tokens.take(trees * width).reshape(trees, width)  # (T, width)
        if not ((block[:, 0] == splits).all() and (block[:, 1 + 4 * splits] == leaves).all()
                and (np.abs(block[:, 2 + 4 * splits:].reshape(trees, leaves, leaf_width)[..., :2]) == [rows, 1]).all()):
            raise reader.error("trees of unequal sizes or leaves of other shapes (only cascades of complete, equal "
                               "trees are read)")
        split_block = block[:, 1:1 + 4 * splits].reshape(trees, splits, 4)  # (T, S, 4)
        split_pixels.append(split_block[..., :2])
        thresholds.append(_reals(split_block[..., 2:]))
        leaf_block = block[:, 2 + 4 * splits:].reshape(trees, leaves, leaf_width)[..., 2:]  # (T, L, 2 * rows)
        leaf_values.append(_reals(leaf_block.reshape(trees, leaves, rows, 2)).reshape(trees, leaves, -1, 2))
    anchors = [tokens.take(tokens.count(1 << 20, "feature pixel")) for _ in range(tokens.count(1000, "anchor list"))]
    deltas = [_reals(tokens.take(4 * tokens.count(1 << 20, "offset")).reshape(-1, 2, 2))
              for _ in range(tokens.count(1000, "offset list"))]
    if tokens.index != len(tokens.values):
        raise reader.error(f"{len(tokens.values) - tokens.index} unread values after the shape predictor")
    return _as_arrays(path, initial, split_pixels, thresholds, leaf_values, anchors, deltas,
                      file_hash or file_sha256(path))


def _as_arrays(path: Path, initial, split_pixels, thresholds, leaf_values, anchors, deltas,
               file_hash: str) -> ShapePredictor:
    shapes = {(pixels.shape, values.shape) for pixels, values in zip(split_pixels, leaf_values)}
    if not split_pixels or len(shapes) != 1 or len(anchors) != len(split_pixels) or len(deltas) != len(anchors):
        raise DlibFormatError(f"{path}: {len(split_pixels)} cascades of trees {sorted(shapes)}, {len(anchors)} anchor "
                              f"and {len(deltas)} offset lists; only cascades of equal, complete trees are read")
    split_pixels, thresholds, leaf_values = np.stack(split_pixels), np.stack(thresholds), np.stack(leaf_values)
    anchors, deltas = np.array(anchors), np.array(deltas)
    splits, leaves = split_pixels.shape[2], leaf_values.shape[2]
    if (leaves != splits + 1 or anchors.ndim != 2 or deltas.shape != anchors.shape + (2,)
            or split_pixels.min() < 0 or split_pixels.max() >= anchors.shape[1]
            or anchors.min() < 0 or anchors.max() >= len(initial)):
        raise DlibFormatError(f"{path}: splits, leaves, anchors and offsets disagree ({splits} splits, {leaves} "
                              f"leaves, anchors {anchors.shape}, offsets {deltas.shape}, {len(initial)} points)")
    return ShapePredictor(initial, split_pixels, thresholds, leaf_values, anchors, deltas, file_hash)


def default_landmarker_file() -> Path:
    """dlib's 5-point landmarker as shipped by the ``face-recognition-models`` package."""
    return packaged_model_file(LANDMARKER_FILE, "5-point face landmarker", "landmarker=PATH")


def dlib_chip_matrices(points, size: int, padding: float = DLIB_CHIP_PADDING) -> np.ndarray:
    """(N, 2, 3) photo → chip affines of dlib's ``get_face_chip(size, padding)`` for (N, 5, 2) points of dlib's
    5-point landmarker (get_face_chip_details, then extract_image_chip's sampling): the least-squares similarity
    from the chip template to the photo gives the chip's angle, scale and centre; the chip's first and last pixel
    rows and columns then sit on the edges of a ``size * scale - 1`` px square about that centre."""
    template = (padding + DLIB_CHIP_POINTS) / (2 * padding + 1) * size
    matrices = []
    for face in np.asarray(points, dtype=np.float64).reshape(-1, 5, 2):
        chip_to_photo = fit_similarity(template, face)
        direction = chip_to_photo[:, 0]  # the chip's x axis in the photo: scale × (cos, sin)
        scale = np.hypot(*direction)
        rotation = np.array([[direction[0], -direction[1]], [direction[1], direction[0]]]) / scale
        centre = chip_to_photo @ [size / 2, size / 2, 1]
        half = (size * scale - 1) / 2  # dlib's centered_drect shrinks the square by one pixel
        corners = np.array([[-half, -half], [half, -half], [-half, half]]) @ rotation.T + centre  # chip tl, tr, bl
        chip = np.array([[0, 0], [size - 1, 0], [0, size - 1]], dtype=np.float64)
        photo_to_chip = np.linalg.solve(np.hstack([corners, np.ones((3, 1))]), chip).T  # (2, 3)
        matrices.append(photo_to_chip)
    return np.array(matrices).reshape(-1, 2, 3)


@dataclass(frozen=True)
class LandmarkerAlignment(Alignment):
    """dlib's chip from dlib's own 5 points: the detector's 5 landmarks (aligned to ``template``) place a face
    rectangle (``seed_rect``, in that template's chip px) from which dlib's landmarker finds its points; the chip
    is then cut as ``dlib.get_face_chip(size, padding)`` would."""

    landmarker: ShapePredictor | None = field(default=None, compare=False, repr=False)
    seed_rect: tuple[float, float, float, float] = SEED_RECT_150
    padding: float = DLIB_CHIP_PADDING

    @property
    def key(self) -> str:
        seed = ":".join(f"{v:.2f}" for v in self.seed_rect)
        return f"{super().key}-dlib5-{self.landmarker.file_hash[:8]}-s{seed}-p{self.padding:g}"

    def seed_rects(self, landmarks) -> np.ndarray:
        """(N, 4) face rectangles (left, top, right, bottom) for the landmarker, from (N, 5, 2) detector points:
        ``seed_rect`` carried from the template's chip into the photo, axis-aligned and in whole pixels as dlib's
        detector rectangles (the landmarker's start, so sub-pixel seeds move its points: LFW accuracy differs by
        up to 0.1 % between rounded and unrounded seeds, within noise)."""
        landmarks = np.asarray(landmarks, dtype=np.float64).reshape(-1, 5, 2)
        seed = np.array(self.seed_rect).reshape(2, 2) * (self.size / 150.0)  # seed_rect is in 150-px chip px
        rects = []
        for face in landmarks:
            photo_to_chip = np.vstack([fit_similarity(face, np.asarray(self.template)), [0, 0, 1]])
            chip_to_photo = np.linalg.inv(photo_to_chip)[:2]
            centre = chip_to_photo @ [*seed.mean(0), 1]
            half = (seed[1] - seed[0]) / 2 * np.sqrt(abs(np.linalg.det(chip_to_photo[:, :2])))
            rects.append([*(centre - half), *(centre + half)])
        return np.floor(np.array(rects).reshape(-1, 4) + 0.5)  # a detector's rectangle: whole pixels

    def points(self, image: np.ndarray, landmarks) -> np.ndarray:
        """(N, 5, 2) dlib landmarker points for the (N, 5, 2) detector landmarks of one photo, in whole pixels as
        dlib's full_object_detection stores them (the chips the network was trained on were cut from those)."""
        return np.floor(self.landmarker(image, self.seed_rects(landmarks)) + 0.5)

    def align(self, image: np.ndarray, landmarks) -> np.ndarray:
        """(N, size, size, 3) uint8 dlib chips from (N, 5, 2) detector landmarks in photo px."""
        matrices = dlib_chip_matrices(self.points(image, landmarks), self.size, self.padding)
        return warp_chips(image, matrices, self.size, dlib_sampling=True)


def landmarker_alignment(template, margin: float, size: int = 150, landmarker: str | Path | None = None
                         ) -> LandmarkerAlignment:
    """``LandmarkerAlignment`` with dlib's 5-point landmarker read from ``landmarker`` (default: the packaged
    file) for a detector whose 5 points lie on ``template`` (chip px) in dlib's chip."""
    predictor = load_shape_predictor(default_landmarker_file() if landmarker is None else landmarker)
    if predictor.num_points != 5:
        raise DlibFormatError(f"{landmarker}: a {predictor.num_points}-point landmarker; dlib's chip needs the "
                              f"5-point one ({LANDMARKER_FILE})")
    return LandmarkerAlignment(size=size, template=tuple(map(tuple, np.asarray(template).tolist())), margin=margin,
                               landmarker=predictor)
