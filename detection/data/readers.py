"""Face annotation readers: every file format becomes a list of FaceAnnotation in one box convention.

Boxes are float32 ``xyxy`` pixel coordinates (x2 = x1 + width); the formats' own conventions (xywh,
top/left/width/height) are converted here and nowhere else. Landmarks are five (x, y) points per face in
LANDMARK_NAMES order, NaN where the file has none. A malformed file raises AnnotationError whose message
reads ``file:line: what is wrong``.
"""
from __future__ import annotations

import csv
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence
from xml.parsers import expat

import numpy as np

from common.config import ConfigError
from common.errors import UserError

# "left" and "right" are image-left and image-right, as in RetinaFace and MTCNN.
LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "left_mouth_corner", "right_mouth_corner")
NUM_LANDMARKS = len(LANDMARK_NAMES)

ANNOTATION_FORMATS = ("csv", "wider", "retinaface", "coco", "dlib")

CSV_COLUMNS = ("image_path", "x1", "y1", "w", "h", "width", "height")
# A CSV box may overshoot its stated image size by this much (rounding in the annotation tool); it is clipped.
CSV_BOX_TOLERANCE_PX = 1.0

WIDER_FACE_FIELDS = ("x1", "y1", "w", "h", "blur", "expression", "illumination", "invalid", "occlusion", "pose")
_WIDER_INVALID_COLUMN = WIDER_FACE_FIELDS.index("invalid")

# RetinaFace label.txt: ``x y w h`` then, in the train file, 5 x ``lx ly flag`` and a score.
_RETINAFACE_BOX_ONLY_FIELDS = 4
_RETINAFACE_WITH_LANDMARKS_FIELDS = 4 + NUM_LANDMARKS * 3 + 1
_RETINAFACE_ABSENT_LANDMARK = -1.0

# iBUG 300-W 68-point indices used to derive the five landmarks.
_IBUG_EYE_A = slice(36, 42)
_IBUG_EYE_B = slice(42, 48)
_IBUG_NOSE_TIP = 30
_IBUG_MOUTH_CORNERS = [48, 54]
_IBUG_NUM_POINTS = 68


class AnnotationError(UserError, ValueError):
    """A malformed annotation file; the message reads ``file:line: what is wrong`` (``file: ...`` without lines)."""


def _annotation_error(path: Path, line: int | None, problem: str) -> AnnotationError:
    location = f"{path}:{line}" if line is not None else str(path)
    return AnnotationError(f"{location}: {problem}")


@dataclass
class FaceAnnotation:
    """The faces of one image. N faces: boxes (N, 4) float32 xyxy pixels, landmarks (N, 5, 2) float32 with
    NaN where absent, ignore (N,) bool (faces that are neither positives nor negatives, e.g. crowds)."""

    image_path: Path
    boxes: np.ndarray
    landmarks: np.ndarray
    ignore: np.ndarray

    def __post_init__(self) -> None:
        self.image_path = Path(self.image_path)
        self.boxes = np.asarray(self.boxes, dtype=np.float32)
        self.landmarks = np.asarray(self.landmarks, dtype=np.float32)
        self.ignore = np.asarray(self.ignore, dtype=bool)
        num_faces = len(self.boxes)
        if self.boxes.shape != (num_faces, 4):
            raise ValueError(f"{self.image_path}: boxes must have shape (N, 4), got {self.boxes.shape}")
        if self.landmarks.shape != (num_faces, NUM_LANDMARKS, 2) or self.ignore.shape != (num_faces,):
            raise ValueError(
                f"{self.image_path}: {num_faces} boxes need landmarks of shape ({num_faces}, {NUM_LANDMARKS}, 2) "
                f"and ignore of shape ({num_faces},), got {self.landmarks.shape} and {self.ignore.shape}"
            )


@dataclass
class _FaceList:
    """Faces of one image gathered while a file is read."""

    image_path: Path
    boxes: list[list[float]] = field(default_factory=list)
    landmarks: list[np.ndarray] = field(default_factory=list)
    ignore: list[bool] = field(default_factory=list)

    def add(self, box_xyxy: Sequence[float], landmarks: np.ndarray | None = None, ignore: bool = False) -> None:
        self.boxes.append(list(box_xyxy))
        self.landmarks.append(np.full((NUM_LANDMARKS, 2), np.nan) if landmarks is None else landmarks)
        self.ignore.append(ignore)

    def to_annotation(self) -> FaceAnnotation:
        boxes = np.array(self.boxes, dtype=np.float32).reshape(-1, 4)
        landmarks = np.stack(self.landmarks) if self.landmarks else np.zeros((0, NUM_LANDMARKS, 2))
        return FaceAnnotation(self.image_path, boxes, landmarks, self.ignore)


def _xywh_to_xyxy(x: float, y: float, w: float, h: float) -> list[float]:
    return [x, y, x + w, y + h]


def _parse_number(path: Path, line: int, what: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise _annotation_error(path, line, f"{what}: {text.strip()!r} is not a number") from None
    if not math.isfinite(value):
        raise _annotation_error(path, line, f"{what}: {text.strip()!r} is not a finite number")
    return value


def _parse_number_line(path: Path, line: int, text: str, what: str) -> list[float]:
    return [_parse_number(path, line, what, token) for token in text.split()]


def _numbered_lines(path: Path) -> list[tuple[int, str]]:
    """The non-blank lines of a text file, stripped, with their 1-based line numbers."""
    with open(path, encoding="utf-8") as file:
        return [(number, text.strip()) for number, text in enumerate(file, start=1) if text.strip()]


def _warn_dropped(path: Path, dropped_by_reason: dict[str, int]) -> None:
    reasons = [f"{count} {reason}" for reason, count in dropped_by_reason.items() if count]
    if reasons:
        warnings.warn(f"{path}: dropped {sum(dropped_by_reason.values())} boxes ({', '.join(reasons)})", stacklevel=3)


# ---------------------------------------------------------------- CSV


def read_csv(path: str | Path, data_root: str | Path | None = None) -> list[FaceAnnotation]:
    """Read the seed CSV: header ``image_path,x1,y1,w,h,width,height``, one row per face.

    Relative image paths are resolved against ``data_root`` (default: the CSV's folder). Exact duplicate
    rows are dropped with a warning naming their lines; every other problem is an AnnotationError.
    """
    path = Path(path)
    root = Path(data_root) if data_root is not None else path.parent
    faces_by_image: dict[Path, _FaceList] = {}
    stated_size_by_image: dict[Path, tuple[float, float, int]] = {}
    line_by_face: dict[tuple, int] = {}
    duplicate_lines: list[tuple[int, int]] = []
    with open(path, newline="", encoding="utf-8-sig") as file:
        reader = csv.reader(file)
        header = [name.strip() for name in next(reader, [])]
        missing = [name for name in CSV_COLUMNS if name not in header]
        if missing:
            raise _annotation_error(
                path, 1, f"missing column(s) {', '.join(missing)}; expected the header {','.join(CSV_COLUMNS)}, "
                f"found {','.join(header)!r}"
            )
        column_of = {name: header.index(name) for name in CSV_COLUMNS}
        for row in reader:
            line = reader.line_num
            if not any(value.strip() for value in row):
                continue
            if len(row) != len(header):
                raise _annotation_error(path, line, f"expected {len(header)} fields, found {len(row)}")
            image_name = row[column_of["image_path"]].strip()
            if not image_name:
                raise _annotation_error(path, line, "image_path is empty")
            x1, y1, w, h, width, height = (
                _parse_number(path, line, f"column {name}", row[column_of[name]]) for name in CSV_COLUMNS[1:]
            )
            if w <= 0 or h <= 0:
                raise _annotation_error(path, line, f"box size must be positive, found w={w:g} h={h:g}")
            if width <= 0 or height <= 0:
                raise _annotation_error(path, line, f"image size must be positive, found {width:g}x{height:g}")
            image_path = root / image_name
            first_width, first_height, first_line = stated_size_by_image.setdefault(image_path, (width, height, line))
            if (width, height) != (first_width, first_height):
                raise _annotation_error(
                    path, line, f"image size {width:g}x{height:g} of {image_name} differs from "
                    f"{first_width:g}x{first_height:g} on line {first_line}"
                )
            box = _box_inside_image(path, line, _xywh_to_xyxy(x1, y1, w, h), width, height)
            face_key = (image_path, x1, y1, w, h)
            if face_key in line_by_face:
                duplicate_lines.append((line, line_by_face[face_key]))
                continue
            line_by_face[face_key] = line
            faces_by_image.setdefault(image_path, _FaceList(image_path)).add(box)
    if duplicate_lines:
        repeats = ", ".join(f"line {line} repeats line {first}" for line, first in duplicate_lines)
        warnings.warn(f"{path}: dropped {len(duplicate_lines)} duplicate row(s): {repeats}", stacklevel=2)
    return [faces.to_annotation() for faces in faces_by_image.values()]


def _box_inside_image(path: Path, line: int, box_xyxy: list[float], width: float, height: float) -> list[float]:
    """The box clipped to the image when it overshoots by at most CSV_BOX_TOLERANCE_PX; otherwise an error."""
    x1, y1, x2, y2 = box_xyxy
    described = f"box ({x1:g}, {y1:g}, {x2:g}, {y2:g}) xyxy"
    if x2 <= 0 or y2 <= 0 or x1 >= width or y1 >= height:
        raise _annotation_error(path, line, f"{described} lies entirely outside the {width:g}x{height:g} image")
    overshoot = max(-x1, -y1, x2 - width, y2 - height)
    if overshoot > CSV_BOX_TOLERANCE_PX:
        raise _annotation_error(
            path, line, f"{described} extends {overshoot:g} px outside the {width:g}x{height:g} image "
            f"(tolerance {CSV_BOX_TOLERANCE_PX:g} px)"
        )
    return [max(x1, 0.0), max(y1, 0.0), min(x2, width), min(y2, height)]


def split_by_image(
    annotations: Sequence[FaceAnnotation], val_fraction: float = 0.2, seed: int = 42
) -> tuple[list[FaceAnnotation], list[FaceAnnotation]]:
    """Split into (train, val) so that no image is in both; the same inputs and seed give the same split,
    whatever the order of ``annotations``. Each side keeps the input order."""
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"val_fraction must lie strictly between 0 and 1, got {val_fraction}")
    image_paths = sorted({annotation.image_path for annotation in annotations})
    shuffled = np.random.default_rng(seed).permutation(len(image_paths))
    val_count = round(len(image_paths) * val_fraction)
    val_paths = {image_paths[index] for index in shuffled[:val_count]}
    train = [annotation for annotation in annotations if annotation.image_path not in val_paths]
    val = [annotation for annotation in annotations if annotation.image_path in val_paths]
    return train, val


# ---------------------------------------------------------------- WIDER FACE


def read_wider_txt(path: str | Path, images_root: str | Path) -> list[FaceAnnotation]:
    """Read the official WIDER FACE ``wider_face_*_bbx_gt.txt``: an image path line, a face-count line, then
    one ``x1 y1 w h blur expression illumination invalid occlusion pose`` line per face (a count of 0 is
    followed by one line of zeros). Invalid-flagged and zero-size boxes are dropped, with one warning."""
    path, images_root = Path(path), Path(images_root)
    lines = _numbered_lines(path)
    annotations = []
    dropped = {"flagged invalid": 0, "of zero or negative size": 0}
    position = 0
    previous_image = None  # (count line, path) of the image read last
    while position < len(lines):
        image_line, image_name = lines[position]
        if previous_image is not None and _is_number_line(image_name):
            raise _annotation_error(
                path, image_line, f"expected an image path, found {image_name!r}: the face count of "
                f"{previous_image[1]} on line {previous_image[0]} is smaller than its number of faces"
            )
        count_line, count_text = _wider_next_line(path, lines, position + 1, f"the face count of {image_name}")
        try:
            count = int(count_text)
        except ValueError:
            raise _annotation_error(
                path, count_line, f"expected the face count of {image_name}, found {count_text!r}"
            ) from None
        if count < 0:
            raise _annotation_error(path, count_line, f"face count of {image_name} is negative: {count}")
        faces = _FaceList(images_root / image_name)
        # A count of 0 is still followed by one placeholder line of zeros.
        for face_index in range(max(count, 1)):
            what = f"face {face_index + 1} of {count} of {image_name}"
            face_line, face_text = _wider_next_line(path, lines, position + 2 + face_index, what)
            if len(face_text.split()) == 1 and not _is_number_line(face_text):  # the next image's path
                raise _annotation_error(
                    path, face_line, f"expected {what}, found {face_text!r}: the face count of {image_name} "
                    f"on line {count_line} is larger than its number of faces"
                )
            values = _parse_number_line(path, face_line, face_text, what)
            if len(values) != len(WIDER_FACE_FIELDS):
                raise _annotation_error(
                    path, face_line, f"{what}: expected {len(WIDER_FACE_FIELDS)} numbers "
                    f"({' '.join(WIDER_FACE_FIELDS)}), found {face_text!r}"
                )
            if count == 0:
                if any(values):
                    raise _annotation_error(
                        path, face_line,
                        f"{image_name} has 0 faces, so a line of zeros must follow, found {face_text!r}",
                    )
                continue
            x, y, w, h = values[:4]
            if values[_WIDER_INVALID_COLUMN]:
                dropped["flagged invalid"] += 1
            elif w <= 0 or h <= 0:
                dropped["of zero or negative size"] += 1
            else:
                faces.add(_xywh_to_xyxy(x, y, w, h))
        annotations.append(faces.to_annotation())
        previous_image = (count_line, image_name)
        position += 2 + max(count, 1)
    _warn_dropped(path, dropped)
    return annotations


def _is_number_line(text: str) -> bool:
    try:
        for token in text.split():
            float(token)
    except ValueError:
        return False
    return True


def _wider_next_line(path: Path, lines: list[tuple[int, str]], position: int, what: str) -> tuple[int, str]:
    if position >= len(lines):
        last_line = lines[-1][0]
        raise _annotation_error(
            path, last_line, f"file ends after line {last_line}, expected {what}: truncated file or wrong face count"
        )
    return lines[position]


# ---------------------------------------------------------------- RetinaFace label.txt


def read_retinaface_label(path: str | Path, images_root: str | Path) -> list[FaceAnnotation]:
    """Read a RetinaFace ``label.txt``: ``# relative/path.jpg`` lines, each followed by one line per face,
    ``x y w h`` optionally followed by 5 x ``lx ly flag`` and a score (the train file). A landmark of -1
    is absent (NaN). Zero-size boxes are dropped, with one warning."""
    path, images_root = Path(path), Path(images_root)
    face_lists: list[_FaceList] = []
    dropped = {"of zero or negative size": 0}
    for line, text in _numbered_lines(path):
        if text.startswith("#"):
            image_name = text[1:].strip()
            if not image_name:
                raise _annotation_error(path, line, "'#' line without an image path")
            face_lists.append(_FaceList(images_root / image_name))
            continue
        if not face_lists:
            raise _annotation_error(path, line, f"face line before the first '# image path' line: {text!r}")
        values = _parse_number_line(path, line, text, f"face of {face_lists[-1].image_path.name}")
        if len(values) not in (_RETINAFACE_BOX_ONLY_FIELDS, _RETINAFACE_WITH_LANDMARKS_FIELDS):
            raise _annotation_error(
                path, line, f"expected {_RETINAFACE_BOX_ONLY_FIELDS} numbers (x y w h) or "
                f"{_RETINAFACE_WITH_LANDMARKS_FIELDS} (x y w h, 5 x lx ly flag, score), found {len(values)}"
            )
        x, y, w, h = values[:4]
        if w <= 0 or h <= 0:
            dropped["of zero or negative size"] += 1
            continue
        landmarks = None
        if len(values) == _RETINAFACE_WITH_LANDMARKS_FIELDS:
            landmarks = np.array(values[4:4 + NUM_LANDMARKS * 3]).reshape(NUM_LANDMARKS, 3)[:, :2]
            landmarks[(landmarks == _RETINAFACE_ABSENT_LANDMARK).all(axis=1)] = np.nan
        face_lists[-1].add(_xywh_to_xyxy(x, y, w, h), landmarks)
    _warn_dropped(path, dropped)
    return [faces.to_annotation() for faces in face_lists]


# ---------------------------------------------------------------- COCO


def read_coco(path: str | Path, images_root: str | Path) -> list[FaceAnnotation]:
    """Read COCO json: ``images`` (id, file_name) and ``annotations`` (image_id, bbox xywh, optional
    ``keypoints`` of 5 x (x, y, visibility) with visibility 0 = absent, ``iscrowd`` = ignore). Images
    without annotations are kept with no faces; zero-size boxes are dropped, with one warning."""
    path, images_root = Path(path), Path(images_root)
    with open(path, encoding="utf-8") as file:
        try:
            coco = json.load(file)
        except json.JSONDecodeError as error:
            raise _annotation_error(path, error.lineno, f"invalid JSON: {error.msg} (column {error.colno})") from None
    if not isinstance(coco, dict) or not all(isinstance(coco.get(key), list) for key in ("images", "annotations")):
        raise _annotation_error(path, None, "expected a COCO object with 'images' and 'annotations' lists")
    faces_by_image_id: dict[object, _FaceList] = {}
    for index, image in enumerate(coco["images"]):
        if not isinstance(image, dict) or "id" not in image or "file_name" not in image:
            raise _annotation_error(path, None, f"images[{index}] needs 'id' and 'file_name'")
        if image["id"] in faces_by_image_id:
            raise _annotation_error(path, None, f"images[{index}]: image id {image['id']!r} appears twice")
        faces_by_image_id[image["id"]] = _FaceList(images_root / image["file_name"])
    dropped = {"of zero or negative size": 0}
    for index, face in enumerate(coco["annotations"]):
        where = f"annotations[{index}]"
        if not isinstance(face, dict):
            raise _annotation_error(path, None, f"{where} is not an object")
        if face.get("image_id") not in faces_by_image_id:
            raise _annotation_error(
                path, None, f"{where} (id {face.get('id')!r}) refers to image_id {face.get('image_id')!r}, "
                "which is not in 'images'"
            )
        x, y, w, h = _coco_numbers(path, f"{where}.bbox", face.get("bbox"), 4)
        if w <= 0 or h <= 0:
            dropped["of zero or negative size"] += 1
            continue
        landmarks = None
        if face.get("keypoints"):
            points = np.array(_coco_numbers(path, f"{where}.keypoints", face["keypoints"], NUM_LANDMARKS * 3))
            points = points.reshape(NUM_LANDMARKS, 3)
            landmarks = points[:, :2].copy()
            landmarks[points[:, 2] <= 0] = np.nan
        faces_by_image_id[face["image_id"]].add(_xywh_to_xyxy(x, y, w, h), landmarks, bool(face.get("iscrowd", 0)))
    _warn_dropped(path, dropped)
    return [faces.to_annotation() for faces in faces_by_image_id.values()]


def _coco_numbers(path: Path, what: str, values: object, count: int) -> list[float]:
    if (
        not isinstance(values, list)
        or len(values) != count
        or not all(isinstance(value, (int, float)) and not isinstance(value, bool) for value in values)
        or not all(math.isfinite(value) for value in values)
    ):
        raise _annotation_error(path, None, f"{what}: expected a list of {count} finite numbers, found {values!r}")
    return [float(value) for value in values]


# ---------------------------------------------------------------- dlib imglab XML


def read_dlib_xml(path: str | Path) -> list[FaceAnnotation]:
    """Read dlib imglab XML: ``<image file=...>`` holding ``<box top left width height [ignore='1']>``,
    each with optional ``<part name x y>``. Image paths are relative to the XML's folder. Boxes with the 68
    iBUG parts get five landmarks (eye centres, nose tip, mouth corners, image-left first)."""
    return _DlibXmlReader(Path(path)).read()


class _DlibXmlReader:
    """Streams the XML with expat, which knows the line of every element, for errors that name it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.face_lists: list[_FaceList] = []
        self.open_box: tuple[list[float], bool] | None = None  # (xyxy, ignore) of the <box> being read
        self.parts: dict[int, tuple[float, float]] = {}
        self.parser = expat.ParserCreate()
        self.parser.StartElementHandler = self._start
        self.parser.EndElementHandler = self._end

    def read(self) -> list[FaceAnnotation]:
        with open(self.path, "rb") as file:
            try:
                self.parser.ParseFile(file)
            except expat.ExpatError as error:
                problem = f"malformed XML: {expat.ErrorString(error.code)} (column {error.offset + 1})"
                raise _annotation_error(self.path, error.lineno, problem) from None
        return [faces.to_annotation() for faces in self.face_lists]

    def _error(self, problem: str) -> AnnotationError:
        return _annotation_error(self.path, self.parser.CurrentLineNumber, problem)

    def _number(self, attributes: dict[str, str], tag: str, name: str) -> float:
        if name not in attributes:
            raise self._error(f"<{tag}> lacks the attribute {name!r}")
        return _parse_number(self.path, self.parser.CurrentLineNumber, f"<{tag} {name}=...>", attributes[name])

    def _start(self, tag: str, attributes: dict[str, str]) -> None:
        if tag == "image":
            if not attributes.get("file"):
                raise self._error("<image> lacks the attribute 'file'")
            self.face_lists.append(_FaceList(self.path.parent / attributes["file"]))
        elif tag == "box":
            if not self.face_lists:
                raise self._error("<box> outside an <image>")
            left, top, width, height = (
                self._number(attributes, "box", name) for name in ("left", "top", "width", "height")
            )
            if width <= 0 or height <= 0:
                raise self._error(f"box size must be positive, found width={width:g} height={height:g}")
            if attributes.get("ignore", "0") not in ("0", "1"):
                raise self._error(f"<box ignore=...> must be '0' or '1', found {attributes['ignore']!r}")
            self.open_box = (_xywh_to_xyxy(left, top, width, height), attributes.get("ignore") == "1")
            self.parts = {}
        elif tag == "part":
            if self.open_box is None:
                raise self._error("<part> outside a <box>")
            name = attributes.get("name", "")
            if not name.isdigit():
                raise self._error(f"<part name=...> must be a number, found {name!r}")
            self.parts[int(name)] = (self._number(attributes, "part", "x"), self._number(attributes, "part", "y"))

    def _end(self, tag: str) -> None:
        if tag != "box":
            return
        box_xyxy, ignore = self.open_box
        landmarks = None
        if sorted(self.parts) == list(range(_IBUG_NUM_POINTS)):
            landmarks = _landmarks_from_ibug68(np.array([self.parts[index] for index in range(_IBUG_NUM_POINTS)]))
        self.face_lists[-1].add(box_xyxy, landmarks, ignore)
        self.open_box = None


def _landmarks_from_ibug68(points: np.ndarray) -> np.ndarray:
    """(68, 2) iBUG 300-W points -> (5, 2) in LANDMARK_NAMES order (image-left eye and mouth corner first)."""
    eyes = np.stack([points[_IBUG_EYE_A].mean(axis=0), points[_IBUG_EYE_B].mean(axis=0)])
    mouth_corners = points[_IBUG_MOUTH_CORNERS]
    eyes = eyes[np.argsort(eyes[:, 0], kind="stable")]
    mouth_corners = mouth_corners[np.argsort(mouth_corners[:, 0], kind="stable")]
    return np.concatenate([eyes, points[None, _IBUG_NOSE_TIP], mouth_corners])


# ---------------------------------------------------------------- any format


def detect_format(path: str | Path) -> str:
    """The annotation format of ``path`` from its extension, and for .txt from its first line."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix == ".xml":
        return "dlib"
    if suffix == ".json":
        return "coco"
    if suffix == ".txt":
        with open(path, encoding="utf-8") as file:
            first_line = next((text.strip() for text in file if text.strip()), None)
        if first_line is None:
            raise _annotation_error(path, None, "empty file: cannot tell WIDER FACE from RetinaFace label.txt")
        return "retinaface" if first_line.startswith("#") else "wider"
    raise _annotation_error(
        path, None, f"unknown annotation format {suffix!r}; expected .csv, .xml (dlib), .json (COCO) or "
        ".txt (WIDER FACE or RetinaFace label.txt), or pass fmt= one of " + ", ".join(ANNOTATION_FORMATS)
    )


def read_annotations(
    path: str | Path, data_root: str | Path | None = None, fmt: str | None = None
) -> list[FaceAnnotation]:
    """Read any supported annotation file. ``fmt`` (one of ANNOTATION_FORMATS) defaults to detect_format.

    ``data_root`` is the folder image paths are relative to: optional for CSV (default: the CSV's folder),
    required for WIDER, RetinaFace and COCO, and not accepted for dlib XML (paths relative to the XML).
    """
    path = Path(path)
    try:
        return _read_annotations(path, data_root, fmt)
    except UnicodeDecodeError as error:
        raise _annotation_error(path, None, f"not UTF-8 text (byte {error.start} is {error.object[error.start]:#04x}); "
                                "save the file as UTF-8") from None


def _read_annotations(path: Path, data_root: str | Path | None, fmt: str | None) -> list[FaceAnnotation]:
    fmt = detect_format(path) if fmt is None else fmt
    if fmt not in ANNOTATION_FORMATS:
        raise AnnotationError(f"{path}: unknown annotation format {fmt!r}; expected one of "
                              f"{', '.join(ANNOTATION_FORMATS)}")
    if fmt == "csv":
        return read_csv(path, data_root)
    if fmt == "dlib":
        if data_root is not None:
            raise AnnotationError(f"{path}: dlib XML image paths are relative to the XML's folder; data_root is "
                                  "not used")
        return read_dlib_xml(path)
    if data_root is None:
        raise AnnotationError(f"{path}: {fmt} annotations need data_root, the folder their image paths are relative to")
    reader = {"wider": read_wider_txt, "retinaface": read_retinaface_label, "coco": read_coco}[fmt]
    return reader(path, data_root)


def read_train_val(data: dict) -> tuple[list[FaceAnnotation], list[FaceAnnotation]]:
    """(train, val) annotations from a config's ``data`` section: ``train`` and ``val`` files in ``format``
    (``auto`` = by content) under ``root``; without ``val``, ``val_fraction`` of train's images (``split_seed``)."""
    if not data["train"]:
        raise ConfigError("no training data: set data.train in the config or pass --train-data")
    fmt = None if data["format"] == "auto" else data["format"]
    train = read_annotations(data["train"], data_root=data["root"], fmt=fmt)
    if not train:
        raise _annotation_error(Path(data["train"]), None, "no annotated images: nothing to train on")
    if data["val"]:
        return train, read_annotations(data["val"], data_root=data["root"], fmt=fmt)
    return split_by_image(train, val_fraction=data["val_fraction"], seed=data["split_seed"])
