"""Per-detector score calibration: map each detector's raw scores to the probability that a detection is a face,
fitted on a labelled set, so scores of different detectors mean the same before they are merged.

Fit: run the detector on labelled photos with a low score threshold, label each detection a hit or a miss by the
benchmark's matching (IoU ≥ 0.5, or nose point in box), and fit scikit-learn's ``LogisticRegression`` on the
score's logit (Platt scaling) or ``IsotonicRegression`` on the score. Saved as JSON.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

from common.errors import InputError
from common.config import ConfigError
from common.boxes import as_boxes, box_iou
from common.metrics import matched_detections, matched_points

METHODS = ("logistic", "isotonic")
_EPS = 1e-6


def _logit(scores: np.ndarray) -> np.ndarray:
    clipped = np.clip(np.asarray(scores, dtype=np.float64), _EPS, 1 - _EPS)
    return np.log(clipped / (1 - clipped))


MIN_BIN_EXAMPLES = 10  # a face-size bin needs this many hits and as many misses for its own fit; else the pooled one


class ScoreCalibrator:
    """``calibrate(scores, widths)`` → calibrated scores in [0, 1]; the identity until fitted.

    Fitted by face size (``edges``: face-width bin edges in px, the last bin open), each bin with enough hits and
    misses gets its own fit and the others the pooled one, and each bin records the detector's recall there on the
    fitting photos: a detector is competent at a face width where that recall reaches ``competent_recall``
    (fusion leaves it out of a face's score elsewhere). ``fitted_on`` says what it was fitted on."""

    def __init__(self, method: str = "logistic", params: dict | None = None, edges=None, bins: list | None = None,
                 fitted_on: dict | None = None):
        if method not in METHODS:
            raise ConfigError(f"calibration method must be one of {', '.join(METHODS)}, got {method!r}")
        self.method, self.params = method, params
        self.edges, self.bins, self.fitted_on = (list(edges) if edges is not None else None), bins, fitted_on

    def _fit_params(self, scores: np.ndarray, hits: np.ndarray) -> dict:
        if self.method == "logistic":
            model = LogisticRegression(C=1e4).fit(_logit(scores)[:, None], hits)
            return {"coef": float(model.coef_[0, 0]), "intercept": float(model.intercept_[0])}
        model = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(scores, hits.astype(float))
        return {"x": model.X_thresholds_.tolist(), "y": model.y_thresholds_.tolist()}

    def fit(self, scores, hits, widths=None, edges=None, face_widths=None, faces_found=None) -> "ScoreCalibrator":
        """Fit on detections (``scores``, ``hits``; ``widths``: their box widths) and, by size (``edges``), on the
        labelled faces (``face_widths``, ``faces_found``: whether any detection found each)."""
        scores, hits = np.asarray(scores, dtype=np.float64), np.asarray(hits, dtype=bool)
        if len(np.unique(hits)) < 2:
            raise InputError(f"calibration needs both hits and misses among the detections; got {int(hits.sum())} "
                             f"hits of {len(hits)} (lower the detector's score threshold or add photos)")
        self.params = self._fit_params(scores, hits)
        if edges is None:
            return self
        self.edges, self.bins = [float(edge) for edge in edges], []
        detection_bin = np.digitize(np.asarray(widths, dtype=np.float64), self.edges[1:])
        face_bin = np.digitize(np.asarray(face_widths, dtype=np.float64), self.edges[1:])
        faces_found = np.asarray(faces_found, dtype=bool)
        for index in range(len(self.edges)):
            mine = detection_bin == index
            bin_hits, bin_misses = int(hits[mine].sum()), int((~hits[mine]).sum())
            own = bin_hits >= MIN_BIN_EXAMPLES and bin_misses >= MIN_BIN_EXAMPLES
            faces = int((face_bin == index).sum())
            self.bins.append({"hits": bin_hits, "misses": bin_misses, "faces": faces,
                              "recall": round(float(faces_found[face_bin == index].mean()), 4) if faces else None,
                              "params": self._fit_params(scores[mine], hits[mine]) if own else None})
        return self

    def _apply(self, params: dict, values: np.ndarray) -> np.ndarray:
        if self.method == "logistic":
            return 1 / (1 + np.exp(-(params["coef"] * _logit(values) + params["intercept"])))
        return np.interp(values, params["x"], params["y"])

    def __call__(self, scores: torch.Tensor, widths: torch.Tensor | None = None) -> torch.Tensor:
        if self.params is None:
            return scores
        values = scores.detach().cpu().double().numpy()
        calibrated = self._apply(self.params, values)
        if self.bins is not None and widths is not None:
            where = np.digitize(widths.detach().cpu().double().numpy(), self.edges[1:])
            for index, entry in enumerate(self.bins):
                if entry["params"] is not None and (where == index).any():
                    calibrated[where == index] = self._apply(entry["params"], values[where == index])
        return torch.as_tensor(calibrated, dtype=torch.float32)

    def competent(self, widths: torch.Tensor, competent_recall: float) -> torch.Tensor:
        """(N,) bool: whether the detector finds faces of each width (its recall in that width's bin on the fitting
        photos reaches ``competent_recall``; a bin without faces, or a calibration without bins, counts as yes)."""
        if self.bins is None:
            return torch.ones(len(widths), dtype=torch.bool)
        recall = torch.tensor([1.0 if entry["recall"] is None else entry["recall"] for entry in self.bins])
        where = torch.bucketize(widths.detach().cpu().float(), torch.tensor(self.edges[1:]), right=True)
        return recall[where] >= competent_recall

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {"method": self.method, "params": self.params}
        if self.bins is not None:
            data.update(edges=self.edges, bins=self.bins)
        if self.fitted_on is not None:
            data["fitted_on"] = self.fitted_on
        path.write_text(json.dumps(data, indent=1), encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> "ScoreCalibrator":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"calibration file not found: {path} (fit one with python train.py --stage "
                                    "detection --config configs/pipeline.yaml)")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(data["method"], data["params"], data.get("edges"), data.get("bins"), data.get("fitted_on"))
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise InputError(f"{path}: not a calibration file ({error})") from None


def labelled_scores(detections, items: list[dict], iou_threshold: float = 0.5
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(scores, hits, box widths) of every detection that counts (the benchmark's matching: IoU, or nose point in
    box; detections of ``gt_ignore`` faces dropped), one ``Detections`` per benchmark item, and (widths, found) of
    every labelled face with a box that is not ignored: whether a detection overlaps it by ``iou_threshold``."""
    scores, hits, widths, face_widths, found = [], [], [], [], []
    for detections_of_item, item in zip(detections, items):
        boxes = detections_of_item.boxes
        if "gt_points" in item:
            index, item_hits = matched_points(boxes, detections_of_item.scores, item["gt_points"])
        else:
            ignore = item.get("gt_ignore")
            index, item_hits = matched_detections(boxes, detections_of_item.scores, item["gt_boxes"], ignore,
                                                  iou_threshold)
            gt_boxes = as_boxes(item["gt_boxes"])
            if ignore is not None:
                gt_boxes = gt_boxes[~torch.as_tensor(ignore, dtype=torch.bool)]
            face_widths.append((gt_boxes[:, 2] - gt_boxes[:, 0]).numpy())
            found.append((box_iou(gt_boxes, boxes) >= iou_threshold).any(1).numpy() if len(boxes)
                         else np.zeros(len(gt_boxes), bool))
        scores.append(detections_of_item.scores.numpy()[index])
        hits.append(item_hits)
        widths.append((boxes[:, 2] - boxes[:, 0]).numpy()[index])
    empty = np.zeros(0)
    return (np.concatenate(scores or [empty]), np.concatenate(hits or [empty.astype(bool)]),
            np.concatenate(widths or [empty]), np.concatenate(face_widths or [empty]),
            np.concatenate(found or [empty.astype(bool)]))
