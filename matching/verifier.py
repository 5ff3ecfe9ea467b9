"""Face verification: decide from two embeddings whether they show the same person.

Two verifiers share one interface (``fit(e1, e2, same)``, ``score(e1, e2)`` — higher means more likely the same
person — ``predict(e1, e2)``, ``save(path)`` and ``load_verifier(path)``):

- ``ThresholdVerifier``: a threshold on cosine similarity or on L2 distance (scored as ``-distance`` so that
  higher is always "same"). ``fit`` takes the best-accuracy threshold on the training pairs, searched over the
  midpoints between consecutive distinct training scores (and one point below/above all of them), the usual LFW
  rule: any threshold between two neighbouring scores classifies the training pairs alike, and the midpoint
  leaves both sides the same room. When several midpoints tie, the middle one of them is taken.
- ``ClassifierVerifier``: a scikit-learn classifier (logistic regression, or a small MLP) on the standardised
  pair features ``[|e1 - e2|, e1 * e2, cos(e1, e2)]``; its score is the probability of "same", predicted at 0.5.
"""
from __future__ import annotations

import json
from pathlib import Path

import joblib
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from common.errors import InputError

METRICS = ("cosine", "l2")
CLASSIFIERS = ("logistic", "mlp")
THRESHOLD_FORMAT = "facepipe-threshold-verifier"
CLASSIFIER_FORMAT = "facepipe-classifier-verifier"
END_PAD = 1.0  # the candidate thresholds below/above every training score sit this far outside them
PROBABILITY_CUT = 0.5  # a classifier predicts "same" at P(same) >= this
# Logistic C (the MLP's L2 penalty is 1 / C), chosen on LFW View 1 (fit pairsDevTrain, score pairsDevTest) with
# dlib_resnet embeddings: held-out accuracy 0.985 at C = 0.01 and 0.001, 0.980 at 0.1, 0.975 at 1 (train 1.0).
DEFAULT_REGULARISATION = 0.01
SEED = 0


def _pair_arrays(e1, e2) -> tuple[np.ndarray, np.ndarray]:
    e1 = np.asarray(e1, dtype=np.float64)
    e2 = np.asarray(e2, dtype=np.float64)
    if e1.ndim != 2 or e1.shape != e2.shape:
        raise ValueError(f"expected two (N, D) embedding arrays of the same shape, got {e1.shape} and {e2.shape}")
    return e1, e2


def _labels(same, n: int) -> np.ndarray:
    same = np.asarray(same).astype(bool).reshape(-1)
    if same.shape != (n,):
        raise ValueError(f"expected {n} same/different labels, got {same.shape[0]}")
    return same


def cosine_similarity(e1, e2) -> np.ndarray:
    """(N,) cosine of each row pair (embeddings need not be normalised)."""
    e1, e2 = _pair_arrays(e1, e2)
    norms = np.linalg.norm(e1, axis=1) * np.linalg.norm(e2, axis=1)
    return (e1 * e2).sum(1) / np.maximum(norms, np.finfo(np.float64).tiny)


def similarity(e1, e2, metric: str) -> np.ndarray:
    """(N,) similarity, higher = more alike: the cosine, or the negated L2 distance."""
    if metric == "cosine":
        return cosine_similarity(e1, e2)
    if metric == "l2":
        e1, e2 = _pair_arrays(e1, e2)
        return -np.linalg.norm(e1 - e2, axis=1)
    raise ValueError(f"unknown metric {metric!r}; expected one of {', '.join(METRICS)}")


def best_threshold(scores, same) -> tuple[float, float]:
    """(threshold, training accuracy) of the rule ``score >= threshold`` that classifies the most pairs right;
    candidates are the midpoints between consecutive distinct scores plus one below and one above all."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    same = _labels(same, len(scores))
    if len(scores) == 0:
        raise InputError("cannot fit a threshold on zero pairs")
    distinct = np.unique(scores)  # sorted
    candidates = np.concatenate([[distinct[0] - END_PAD], (distinct[:-1] + distinct[1:]) / 2,
                                 [distinct[-1] + END_PAD]])
    same_sorted = np.sort(scores[same])
    different_sorted = np.sort(scores[~same])
    # Right answers at each candidate: same pairs at or above it, different pairs below it.
    same_right = len(same_sorted) - np.searchsorted(same_sorted, candidates, side="left")
    different_right = np.searchsorted(different_sorted, candidates, side="left")
    correct = same_right + different_right
    optimal = np.flatnonzero(correct == correct.max())
    chosen = optimal[len(optimal) // 2]
    return float(candidates[chosen]), float(correct[chosen] / len(scores))


class ThresholdVerifier:
    """Same person when ``similarity(e1, e2, metric) >= threshold``."""

    kind = "threshold"

    def __init__(self, metric: str = "cosine", threshold: float | None = None):
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}; expected one of {', '.join(METRICS)}")
        self.metric = metric
        self.threshold = threshold
        self.train_accuracy: float | None = None

    def fit(self, e1, e2, same) -> "ThresholdVerifier":
        self.threshold, self.train_accuracy = best_threshold(self.score(e1, e2), same)
        return self

    def score(self, e1, e2) -> np.ndarray:
        return similarity(e1, e2, self.metric)

    def predict(self, e1, e2) -> np.ndarray:
        if self.threshold is None:
            raise ValueError("ThresholdVerifier.predict before fit: no threshold yet")
        return self.score(e1, e2) >= self.threshold

    def describe(self) -> dict:
        return {"verifier": self.kind, "metric": self.metric, "threshold": self.threshold}

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"format": THRESHOLD_FORMAT, **self.describe()}, indent=2), encoding="utf-8")
        return path


def pair_features(e1, e2) -> np.ndarray:
    """(N, 2D + 1) features of N embedding pairs: ``|e1 - e2|``, ``e1 * e2`` and the cosine."""
    e1, e2 = _pair_arrays(e1, e2)
    return np.hstack([np.abs(e1 - e2), e1 * e2, cosine_similarity(e1, e2)[:, None]])


def _classifier(kind: str, regularisation: float, hidden: tuple[int, ...], max_iter: int):
    if kind == "logistic":
        model = LogisticRegression(C=regularisation, max_iter=max_iter)
    elif kind == "mlp":
        model = MLPClassifier(hidden_layer_sizes=hidden, alpha=1.0 / regularisation, max_iter=max_iter,
                              random_state=SEED)
    else:
        raise ValueError(f"unknown classifier {kind!r}; expected one of {', '.join(CLASSIFIERS)}")
    return make_pipeline(StandardScaler(), model)


class ClassifierVerifier:
    """A learned verifier over ``pair_features``; ``regularisation`` is logistic regression's C (the MLP's L2
    penalty is its inverse)."""

    kind = "classifier"

    def __init__(self, classifier: str = "logistic", regularisation: float = DEFAULT_REGULARISATION,
                 hidden: tuple[int, ...] = (64,), max_iter: int = 1000):
        self.classifier = classifier
        self.regularisation = regularisation
        self.hidden = tuple(hidden)
        self.max_iter = max_iter
        self.pipeline = _classifier(classifier, regularisation, self.hidden, max_iter)
        self.fitted = False
        self.train_accuracy: float | None = None

    def fit(self, e1, e2, same) -> "ClassifierVerifier":
        features = pair_features(e1, e2)
        same = _labels(same, len(features))
        if len(np.unique(same)) < 2:
            raise InputError("a classifier verifier needs both same and different pairs to fit")
        self.pipeline.fit(features, same)
        self.fitted = True
        self.train_accuracy = float((self.predict(e1, e2) == same).mean())
        return self

    def score(self, e1, e2) -> np.ndarray:
        if not self.fitted:
            raise ValueError("ClassifierVerifier.score before fit")
        return self.pipeline.predict_proba(pair_features(e1, e2))[:, list(self.pipeline.classes_).index(True)]

    def predict(self, e1, e2) -> np.ndarray:
        return self.score(e1, e2) >= PROBABILITY_CUT

    def describe(self) -> dict:
        return {"verifier": self.kind, "classifier": self.classifier, "regularisation": self.regularisation,
                "hidden": list(self.hidden) if self.classifier == "mlp" else None}

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        joblib.dump({"format": CLASSIFIER_FORMAT, "verifier": self}, path)
        return path


def build_verifier(kind: str, metric: str = "cosine", classifier: str = "logistic", **options):
    """A fresh, unfitted verifier: ``kind`` is "threshold" (uses ``metric``) or "classifier"."""
    if kind == "threshold":
        return ThresholdVerifier(metric)
    if kind == "classifier":
        return ClassifierVerifier(classifier, **options)
    raise ValueError(f"unknown verifier {kind!r}; expected threshold or classifier")


def load_verifier(path: str | Path):
    """A verifier saved by ``save``: JSON for a threshold, joblib for a classifier (only load files you trust:
    joblib unpickles)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"verifier file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        data = joblib.load(path)
        if not isinstance(data, dict) or data.get("format") != CLASSIFIER_FORMAT:
            raise InputError(f"{path}: not a verifier file (expected a {CLASSIFIER_FORMAT} joblib)") from None
        return data["verifier"]
    if not isinstance(data, dict) or data.get("format") != THRESHOLD_FORMAT or "threshold" not in data:
        raise InputError(f"{path}: not a verifier file (expected JSON with format {THRESHOLD_FORMAT!r})")
    return ThresholdVerifier(data.get("metric", "cosine"), data["threshold"])
