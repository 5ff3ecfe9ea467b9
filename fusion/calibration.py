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
from common.metrics import match_image, match_image_points

METHODS = ("logistic", "isotonic")
_EPS = 1e-6


def _logit(scores: np.ndarray) -> np.ndarray:
    clipped = np.clip(np.asarray(scores, dtype=np.float64), _EPS, 1 - _EPS)
    return np.log(clipped / (1 - clipped))


class ScoreCalibrator:
    """``calibrate(scores)`` → calibrated scores in [0, 1]; the identity until fitted."""

    def __init__(self, method: str = "logistic", params: dict | None = None):
        if method not in METHODS:
            raise ConfigError(f"calibration method must be one of {', '.join(METHODS)}, got {method!r}")
        self.method, self.params = method, params

    def fit(self, scores, hits) -> "ScoreCalibrator":
        scores, hits = np.asarray(scores, dtype=np.float64), np.asarray(hits, dtype=bool)
        if len(np.unique(hits)) < 2:
            raise InputError(f"calibration needs both hits and misses among the detections; got {int(hits.sum())} "
                             f"hits of {len(hits)} (lower the detector's score threshold or add photos)")
        if self.method == "logistic":
            model = LogisticRegression(C=1e4).fit(_logit(scores)[:, None], hits)
            self.params = {"coef": float(model.coef_[0, 0]), "intercept": float(model.intercept_[0])}
        else:
            model = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(scores, hits.astype(float))
            self.params = {"x": model.X_thresholds_.tolist(), "y": model.y_thresholds_.tolist()}
        return self

    def __call__(self, scores: torch.Tensor) -> torch.Tensor:
        if self.params is None:
            return scores
        values = scores.detach().cpu().double().numpy()
        if self.method == "logistic":
            calibrated = 1 / (1 + np.exp(-(self.params["coef"] * _logit(values) + self.params["intercept"])))
        else:
            calibrated = np.interp(values, self.params["x"], self.params["y"])
        return torch.as_tensor(calibrated, dtype=torch.float32)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"method": self.method, "params": self.params}, indent=1), encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> "ScoreCalibrator":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"calibration file not found: {path} (fit one with "
                                    "python -m fusion.calibrate --help)")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(data["method"], data["params"])
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise InputError(f"{path}: not a calibration file ({error})") from None


def labelled_scores(detections, items: list[dict], iou_threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """(scores, hits) of every detection, one ``Detections`` per benchmark item (``gt_boxes`` or ``gt_points``)."""
    scores, hits = [], []
    for found, item in zip(detections, items):
        if "gt_points" in item:
            s, h = match_image_points(found.boxes, found.scores, item["gt_points"])
        else:
            s, h = match_image(found.boxes, found.scores, item["gt_boxes"], item.get("gt_ignore"), iou_threshold)
        scores.append(s)
        hits.append(h)
    return np.concatenate(scores or [np.zeros(0)]), np.concatenate(hits or [np.zeros(0, bool)])
