"""The detection benchmarks of ``evaluate.py``: ``--benchmark detection`` (AP of a detector on annotated photos)
and ``--benchmark wider`` (WIDER FACE val, scored as the official evaluation). The verification benchmarks
(``lfw``, ``pairs``) are in ``pipeline.verification``."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from common.metrics import PrecisionRecall, plot_precision_recall
from detection.evaluation import evaluate_detector, load_benchmark
from detection.wider_eval import (DEFAULT_GROUND_TRUTH, SETTINGS, WiderResult, evaluate_folder, load_ground_truth,
                                  write_predictions)
from pipeline.build import detector_from_config
from pipeline.config import default_config_path, detection_config

AP_SCORE_THRESHOLD = 0.05  # AP needs the low-scoring detections too: this replaces the config's inference threshold


def _benchmark_config(detector: str, config, weights, tile_zooms, score_threshold: float | None) -> dict:
    overrides = {"model.weights": weights, "inference.tile_zooms": tile_zooms,
                 "inference.score_threshold": score_threshold}
    return detection_config(detector, config or default_config_path(detector), overrides)


def _write_json(path, results: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2), encoding="utf-8")


def run_detection_benchmark(data: str | Path, detector: str = "blazeface", config: str | Path | None = None,
                            weights: str | None = None, data_root: str | Path | None = None, fmt: str | None = None,
                            device: str = "cpu", tile_zooms: Sequence[int] | None = None,
                            score_threshold: float = AP_SCORE_THRESHOLD, iou: float = 0.5,
                            out: str | Path | None = None, plot: str | Path | None = None) -> dict:
    """AP@``iou`` of ``detector`` (its config, ``weights`` and ``tile_zooms`` overriding it) on the annotations
    ``data``, and precision/recall at the config's own score threshold; writes the PR curve PNG (``plot``, default
    next to ``out``) and the JSON report (``out``); returns the report."""
    cfg = _benchmark_config(detector, config, weights, tile_zooms, score_threshold)
    operating_threshold = detection_config(detector, config or default_config_path(detector)
                                           )["inference"]["score_threshold"]
    items = load_benchmark(data, data_root, fmt)
    curve = evaluate_detector(detector_from_config(cfg, device), items, iou)
    precision, recall = curve.at_threshold(operating_threshold)
    matching = "nose point inside box" if items and "gt_points" in items[0] else f"IoU>={iou}"
    results = {"benchmark": "detection", "detector": detector, "weights": str(cfg.get("model", {}).get("weights")),
               "data": str(data), "images": len(items), "faces": curve.num_ground_truth,
               "detections": curve.num_detections, "inference": cfg["inference"], "matching": matching,
               "ap50": round(curve.ap, 4),
               "max_recall": round(float(curve.recall[-1]) if len(curve.recall) else 0.0, 4),
               "operating_point": {"score_threshold": operating_threshold, "precision": round(precision, 4),
                                   "recall": round(recall, 4)}}
    print(f"AP@0.5 = {curve.ap:.4f}  ({curve.num_ground_truth} faces in {len(items)} images, {matching}, "
          f"max recall {results['max_recall']:.3f})")
    print(f"at the config's score threshold {operating_threshold}: precision {precision:.3f}, recall {recall:.3f}")
    plot = Path(plot) if plot else (Path(out).with_suffix(".pr.png") if out else Path("pr_curve.png"))
    plot.parent.mkdir(parents=True, exist_ok=True)
    plot_precision_recall({detector: curve}, plot, title=f"{Path(data).parent.name}/{Path(data).name}")
    results["plot"] = str(plot)
    print(f"precision-recall curve: {plot}")
    if out:
        _write_json(out, results)
    return results


def plot_wider(result: WiderResult, path: str | Path) -> None:
    """The official evaluation's precision-recall curves of the three settings in one PNG."""
    curves = {setting: PrecisionRecall(result.ap[setting], result.curves[setting][:, 0],
                                       result.curves[setting][:, 1], np.empty(0), result.faces[setting], 0)
              for setting in SETTINGS}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    plot_precision_recall(curves, path, title="WIDER FACE val")


def run_wider_benchmark(predictions: str | Path, images: str | Path | None = None, wider_gt: str | Path | None = None,
                        detector: str = "retinaface", config: str | Path | None = None, weights: str | None = None,
                        device: str = "cpu", tile_zooms: Sequence[int] | None = None,
                        score_threshold: float = AP_SCORE_THRESHOLD, iou: float = 0.5,
                        out: str | Path | None = None, plot: str | Path | None = None) -> WiderResult:
    """Score the prediction folder ``predictions`` (``<event>/<image>.txt``) against WIDER FACE val; with
    ``images`` (WIDER_val/images) it is first written by ``detector``. Writes the JSON report (``out``) and the
    PR curves (``plot``)."""
    gt_dir = Path(wider_gt) if wider_gt else DEFAULT_GROUND_TRUTH
    ground_truth = load_ground_truth(gt_dir)
    results = {"benchmark": "wider", "predictions": str(predictions), "ground_truth": str(gt_dir)}
    if images:
        cfg = _benchmark_config(detector, config, weights, tile_zooms, score_threshold)
        write_predictions(detector_from_config(cfg, device), images, predictions, ground_truth)
        results.update(detector=detector, weights=str(cfg.get("model", {}).get("weights")),
                       inference=cfg["inference"])
    result = evaluate_folder(predictions, gt_dir, iou)
    for setting in SETTINGS:
        print(f"{setting:<6} AP = {result.ap[setting]:.4f}  ({result.faces[setting]} faces)")
    results.update(ap={s: round(result.ap[s], 4) for s in SETTINGS}, faces=result.faces, iou=iou)
    if plot:
        plot_wider(result, plot)
        results["plot"] = str(plot)
        print(f"precision-recall curves: {plot}")
    if out:
        _write_json(out, results)
    return result
