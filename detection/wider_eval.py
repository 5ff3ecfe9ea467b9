"""WIDER FACE validation: write predictions in the official layout and score them as the official evaluation does.

Prediction folder: ``<event>/<image>.txt`` per image, each ``<image name>``, ``<count>``, then ``count`` lines
``x y w h score`` (pixels, top-left corner and size). Ground truth: the four .mat files of the official
``eval_tools`` (``wider_face_val.mat``: events, files, boxes; ``wider_{easy,medium,hard}_val.mat``: per image the
1-based indices of the faces each setting counts, ``gt_list``).

The scoring follows the official MATLAB ``wider_eval.m`` (and its Python port in Pytorch_Retinaface), step by step:

1. Each image's predictions are sorted by decreasing score (stable); missing files count as no detections.
2. Scores are min-max normalised over every prediction of the whole set (one min and max, not per image).
   Where all scores are equal the official code divides 0 by 0 and scores nothing; here they become 1.
3. Per image, predictions are taken in that order; each looks at the ground-truth box it overlaps most
   (IoU with the ``+1`` pixel convention: areas ``(x2 - x1 + 1)(y2 - y1 + 1)``, ``x2 = x + w``). At IoU ≥ 0.5 with
   a face the setting does not count, the prediction is dropped (neither right nor wrong); with a counted face
   it recalls that face (a face already recalled gives nothing more, and the prediction still counts as a
   proposal). Images without ground truth or without predictions are skipped, but their counted faces
   still count.
4. For 1000 thresholds ``1 - t/1000`` (t = 1..1000) each image adds its proposals and recalled faces among the
   predictions down to the last one scoring at least the threshold; precision = recalled / proposals,
   recall = recalled / counted faces.
5. AP is the VOC all-point area under that curve; as MATLAB's ``max``, the precision envelope skips the
   undefined (0/0) precisions of thresholds above every proposal.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.io import loadmat
from tqdm import tqdm

from common.errors import UserError
from common.io import read_image
from common.metrics import voc_ap

SETTINGS = ("easy", "medium", "hard")
GROUND_TRUTH_FILES = {"all": "wider_face_val.mat", **{s: f"wider_{s}_val.mat" for s in SETTINGS}}
NUM_THRESHOLDS = 1000
IOU_THRESHOLD = 0.5
PREDICTION_HEADER_LINES = 2  # image name, face count
PREDICTION_VALUES = 5  # x y w h score
DEFAULT_GROUND_TRUTH = Path(__file__).resolve().parents[2] / "shared" / "data" / "detection" / "wider_val_ground_truth"


class WiderFormatError(UserError, ValueError):
    """A malformed prediction file or ground-truth folder; the message names the file."""


@dataclass
class WiderImage:
    event: str
    name: str  # without extension, as in the .mat files
    boxes: np.ndarray  # (G, 4) float64 x y w h
    counted: dict[str, np.ndarray]  # setting → 0-based indices of the faces it counts


def _cells(mat: dict, key: str, path: Path) -> np.ndarray:
    if key not in mat:
        raise WiderFormatError(f"{path}: no {key!r} entry; expected the official WIDER FACE eval_tools .mat files")
    return mat[key]


def load_ground_truth(gt_dir: str | Path) -> list[WiderImage]:
    """Every validation image, event by event, in the order of ``wider_face_val.mat``."""
    gt_dir = Path(gt_dir)
    mats = {}
    for key, name in GROUND_TRUTH_FILES.items():
        path = gt_dir / name
        if not path.is_file():
            raise FileNotFoundError(f"WIDER FACE ground truth {path} not found; the folder needs "
                                    f"{', '.join(GROUND_TRUTH_FILES.values())} (eval_tools/ground_truth)")
        mats[key] = (loadmat(str(path)), path)
    whole, whole_path = mats["all"]
    events = _cells(whole, "event_list", whole_path)
    files = _cells(whole, "file_list", whole_path)
    boxes = _cells(whole, "face_bbx_list", whole_path)
    settings = {s: _cells(mats[s][0], "gt_list", mats[s][1]) for s in SETTINGS}
    images = []
    for e in range(len(events)):
        event = str(events[e][0][0])
        for i in range(len(files[e][0])):
            counted = {s: settings[s][e][0][i][0].astype(np.int64).reshape(-1) - 1 for s in SETTINGS}
            images.append(WiderImage(event, str(files[e][0][i][0][0]),
                                     boxes[e][0][i][0].astype(np.float64).reshape(-1, 4), counted))
    return images


def read_prediction_file(path: str | Path) -> np.ndarray:
    """(N, 5) ``x y w h score`` sorted by decreasing score (stable)."""
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    if len(lines) < PREDICTION_HEADER_LINES:
        raise WiderFormatError(f"{path}: expected an image name line and a face count line")
    try:
        count = int(lines[1].strip())
    except ValueError:
        raise WiderFormatError(f"{path}:2: expected the number of faces, got {lines[1]!r}") from None
    if len(lines) < PREDICTION_HEADER_LINES + count:
        raise WiderFormatError(f"{path}: says {count} faces but has {len(lines) - PREDICTION_HEADER_LINES} face lines")
    rows = []
    for number, text in enumerate(lines[PREDICTION_HEADER_LINES:PREDICTION_HEADER_LINES + count],
                                  start=PREDICTION_HEADER_LINES + 1):
        values = text.split()
        try:
            rows.append([float(v) for v in values[:PREDICTION_VALUES]])
        except ValueError:
            raise WiderFormatError(f"{path}:{number}: expected 'x y w h score', got {text!r}") from None
        if len(values) < PREDICTION_VALUES:
            raise WiderFormatError(f"{path}:{number}: expected 'x y w h score', got {text!r}")
    predictions = np.array(rows, dtype=np.float64).reshape(-1, PREDICTION_VALUES)
    return predictions[np.argsort(-predictions[:, 4], kind="stable")]


def read_predictions(pred_dir: str | Path, images: list[WiderImage]) -> list[np.ndarray]:
    """One (N, 5) array per ground-truth image; a missing file is an image without detections (with a warning)."""
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise FileNotFoundError(f"prediction folder {pred_dir} not found")
    predictions, missing = [], []
    for image in images:
        path = pred_dir / image.event / f"{image.name}.txt"
        if path.is_file():
            predictions.append(read_prediction_file(path))
        else:
            missing.append(path)
            predictions.append(np.zeros((0, PREDICTION_VALUES)))
    if missing:
        warnings.warn(f"{len(missing)} of {len(images)} prediction files are missing (e.g. {missing[0]}); "
                      "those images count as having no detections")
    return predictions


def normalize_scores(predictions: list[np.ndarray]) -> list[np.ndarray]:
    """Min-max normalise scores over the whole set; equal scores all become 1."""
    scores = [p[:, 4] for p in predictions if len(p)]
    if not scores:
        return predictions
    low, high = min(s.min() for s in scores), max(s.max() for s in scores)
    normalized = []
    for p in predictions:
        p = p.copy()
        p[:, 4] = (p[:, 4] - low) / (high - low) if high > low else 1.0
        normalized.append(p)
    return normalized


def overlaps_plus_one(boxes_xywh: np.ndarray, query_xywh: np.ndarray) -> np.ndarray:
    """(N, 4) × (K, 4) x y w h → (N, K) IoU with the +1 pixel convention of the official evaluation."""
    a = np.concatenate([boxes_xywh[:, :2], boxes_xywh[:, :2] + boxes_xywh[:, 2:4]], axis=1)  # (N, 4) x1 y1 x2 y2
    b = np.concatenate([query_xywh[:, :2], query_xywh[:, :2] + query_xywh[:, 2:4]], axis=1)  # (K, 4)
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]) + 1  # (N, K)
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]) + 1
    area_a = (a[:, 2] - a[:, 0] + 1) * (a[:, 3] - a[:, 1] + 1)
    area_b = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
    inter = iw * ih
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / (area_a[:, None] + area_b[None, :] - inter)
    return np.where((iw > 0) & (ih > 0), iou, 0.0)


def image_evaluation(predictions: np.ndarray, gt_boxes: np.ndarray, counted: np.ndarray,
                     iou_threshold: float = IOU_THRESHOLD, overlaps: np.ndarray | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """→ (faces recalled by the first h + 1 predictions, is-proposal flag) per prediction, in order.
    ``overlaps``: the (P, G) IoU of predictions and faces, if already computed."""
    if overlaps is None:
        overlaps = overlaps_plus_one(predictions[:, :4], gt_boxes)  # (P, G)
    best = overlaps.argmax(axis=1)  # the first of equal maxima, as the official code
    matched = overlaps[np.arange(len(predictions)), best] >= iou_threshold
    is_counted = np.zeros(len(gt_boxes), dtype=bool)
    is_counted[counted] = True
    proposal = ~(matched & ~is_counted[best])
    hits = np.where(matched & is_counted[best], best, -1)
    first_hit = np.zeros(len(predictions), dtype=bool)
    faces, first = np.unique(hits, return_index=True)
    first_hit[first[faces >= 0]] = True
    return np.cumsum(first_hit), proposal


def image_pr_info(scores: np.ndarray, proposal: np.ndarray, recalled: np.ndarray,
                  num_thresholds: int = NUM_THRESHOLDS) -> np.ndarray:
    """(T, 2): proposals and recalled faces among the predictions scoring at least each threshold."""
    thresholds = 1 - np.arange(1, num_thresholds + 1) / num_thresholds
    # Predictions are sorted by decreasing score: those above a threshold are a prefix.
    kept = np.searchsorted(-scores, -thresholds, side="right")  # (T,) how many score >= each threshold
    proposals = np.concatenate([[0], np.cumsum(proposal)])[kept]
    recalls = np.concatenate([[0], recalled])[kept]
    return np.stack([proposals, recalls], axis=1).astype(np.float64)



@dataclass
class WiderResult:
    ap: dict[str, float]  # setting → AP
    curves: dict[str, np.ndarray]  # setting → (T, 2) precision, recall
    faces: dict[str, int]  # setting → counted faces


def evaluate_predictions(predictions: list[np.ndarray], images: list[WiderImage],
                         iou_threshold: float = IOU_THRESHOLD) -> WiderResult:
    """Score one (N, 5) ``x y w h score`` array per image (in ``images`` order)."""
    if len(predictions) != len(images):
        raise ValueError(f"{len(predictions)} prediction arrays for {len(images)} images")
    predictions = [p[np.argsort(-p[:, 4], kind="stable")] for p in normalize_scores(predictions)]
    totals = {setting: np.zeros((NUM_THRESHOLDS, 2)) for setting in SETTINGS}
    faces = {setting: sum(len(image.counted[setting]) for image in images) for setting in SETTINGS}
    for image, prediction in zip(images, predictions):
        if len(image.boxes) == 0 or len(prediction) == 0:
            continue
        overlaps = overlaps_plus_one(prediction[:, :4], image.boxes)
        for setting in SETTINGS:
            recalled, proposal = image_evaluation(prediction, image.boxes, image.counted[setting], iou_threshold,
                                                  overlaps)
            totals[setting] += image_pr_info(prediction[:, 4], proposal, recalled)
    aps, curves = {}, {}
    for setting in SETTINGS:
        with np.errstate(divide="ignore", invalid="ignore"):
            precision = totals[setting][:, 1] / totals[setting][:, 0]
        recall = totals[setting][:, 1] / max(faces[setting], 1)
        aps[setting] = voc_ap(recall, precision)
        curves[setting] = np.stack([precision, recall], axis=1)
    return WiderResult(aps, curves, faces)


def evaluate_folder(pred_dir: str | Path, gt_dir: str | Path, iou_threshold: float = IOU_THRESHOLD) -> WiderResult:
    images = load_ground_truth(gt_dir)
    return evaluate_predictions(read_predictions(pred_dir, images), images, iou_threshold)


def format_prediction(image_name: str, boxes_xyxy: np.ndarray, scores: np.ndarray) -> str:
    """The official text of one image: name, count, ``x y w h score`` lines."""
    lines = [image_name, str(len(boxes_xyxy))]
    for (x1, y1, x2, y2), score in zip(np.asarray(boxes_xyxy, dtype=np.float64), np.asarray(scores)):
        lines.append(f"{x1:.2f} {y1:.2f} {x2 - x1:.2f} {y2 - y1:.2f} {float(score):.6f}")
    return "\n".join(lines) + "\n"


def write_predictions(detector, images_dir: str | Path, out_dir: str | Path, images: list[WiderImage]) -> int:
    """Run ``detector`` on ``images_dir/<event>/<image>.jpg`` (WIDER_val/images) and write the prediction folder;
    returns the number of images."""
    images_dir, out_dir = Path(images_dir), Path(out_dir)
    first = images_dir / images[0].event / f"{images[0].name}.jpg"
    if not first.is_file():
        raise FileNotFoundError(f"{first} not found: --images must be WIDER_val/images (event folders of .jpg)")
    for image in tqdm(images, desc="detecting", unit="image"):
        detections = detector.detect([read_image(images_dir / image.event / f"{image.name}.jpg")])[0]
        path = out_dir / image.event / f"{image.name}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(format_prediction(f"{image.name}.jpg", detections.boxes.numpy(), detections.scores.numpy()),
                        encoding="utf-8")
    return len(images)
