"""The detection benchmarks of ``evaluate.py``: ``--benchmark detection`` (AP of a detector on annotated photos)
and ``--benchmark wider`` (WIDER FACE val, scored as the official evaluation). The verification benchmarks
(``lfw``, ``pairs``) are in ``pipeline.verification``."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from common.config import ConfigError
from common.metrics import PrecisionRecall, average_precision, plot_precision_recall, plot_recall_by_size
from detection.evaluation import DETECTION_SIZE_BINS, detect_items, load_benchmark, size_bin_curves
from detection.wider_eval import (DEFAULT_GROUND_TRUTH, SETTINGS, WiderResult, evaluate_folder, load_ground_truth,
                                  write_predictions)
from pipeline.build import detector_from_config
from pipeline.config import default_config_path, detection_config
from pipeline.group_photos import GROUPS, generate_groups, groups_config

AP_SCORE_THRESHOLD = 0.05  # AP needs the low-scoring detections too: this replaces the config's inference threshold


def _benchmark_config(detector: str, config, weights, min_face_px: str | None, score_threshold: float | None,
                      set_items: Sequence[str] = ()) -> dict:
    """``min_face_px``: a YAML value (a number, or null) of ``inference.min_face_px``, None to keep the config's;
    ``set_items``: ``key=value`` overrides on top."""
    overrides = {"model.weights": weights, "inference.score_threshold": score_threshold}
    return detection_config(detector, config or default_config_path(detector), overrides,
                            [*([f"inference.min_face_px={min_face_px}"] if min_face_px is not None else []),
                             *set_items])


def _write_json(path, results: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2), encoding="utf-8")


def source_figures(scored: list[dict], operating_threshold: float, iou: float) -> tuple[dict, PrecisionRecall]:
    """AP, the operating point and both per face-width bin of one source's scored items."""
    curve = average_precision(scored, iou)
    precision, recall = curve.at_threshold(operating_threshold)
    by_size = []
    if scored and "gt_boxes" in scored[0]:
        for label, bin_curve in size_bin_curves(scored, DETECTION_SIZE_BINS, iou).items():
            bin_precision, bin_recall = bin_curve.at_threshold(operating_threshold)
            by_size.append({"face_px": label, "faces": bin_curve.num_ground_truth, "ap50": round(bin_curve.ap, 4),
                            "recall": round(bin_recall, 4), "precision": round(bin_precision, 4)})
    figures = {"faces": curve.num_ground_truth, "detections": curve.num_detections, "ap50": round(curve.ap, 4),
               "max_recall": round(float(curve.recall[-1]) if len(curve.recall) else 0.0, 4),
               "operating_point": {"score_threshold": operating_threshold, "precision": round(precision, 4),
                                   "recall": round(recall, 4)},
               "by_face_px": by_size}
    return figures, curve


def resolve_detection_data(data: str | Path, split: str | None = None, device: str = "cpu") -> Path:
    """The annotation file ``data`` names: ``groups`` is the group-photo benchmark's split (written on first use);
    anything else is a path. ``split`` applies to ``groups`` only."""
    if str(data) == GROUPS:
        return generate_groups(groups_config(), split, device=device)
    if split is not None:
        raise ConfigError(f"--split applies to --data {GROUPS} (the generated group photos), not to {data}")
    return Path(data)


def run_detection_benchmark(data: str | Path, detector: str = "blazeface", config: str | Path | None = None,
                            weights: str | None = None, data_root: str | Path | None = None, fmt: str | None = None,
                            device: str = "cpu", min_face_px: str | None = None,
                            score_threshold: float = AP_SCORE_THRESHOLD, iou: float = 0.5,
                            out: str | Path | None = None, plot: str | Path | None = None,
                            split: str | None = None, set_items: Sequence[str] = ()) -> dict:
    """AP@``iou`` of ``detector`` (its config, ``weights`` and ``min_face_px`` overriding it) on the annotations
    ``data`` (``groups``: the generated group photos of ``split``), precision and recall at the config's own score
    threshold, and both per face-width bin; a fused detector's members are scored too, each on its calibrated
    scores at the fusion's threshold. Writes the PR curve PNG (``plot``, default next to ``out``), the recall by
    face size beside it, and the JSON report (``out``); returns the report."""
    data = resolve_detection_data(data, split, device)
    cfg = _benchmark_config(detector, config, weights, min_face_px, score_threshold, set_items)
    operating_threshold = detection_config(detector, config or default_config_path(detector), set_items=set_items
                                           )["inference"]["score_threshold"]
    items = load_benchmark(data, data_root, fmt)
    scored = detect_items(detector_from_config(cfg, device), items)
    main_source = "fusion" if "fusion" in scored else "detector"
    figures, curves = {}, {}
    for source, source_items in scored.items():
        name = detector if source == main_source else source
        figures[name], curves[name] = source_figures(source_items, operating_threshold, iou)
    matching = "nose point inside box" if items and "gt_points" in items[0] else f"IoU>={iou}"
    results = {"benchmark": "detection", "detector": detector, "weights": str(cfg.get("model", {}).get("weights")),
               "data": str(data), "images": len(items), "inference": cfg["inference"], "matching": matching,
               **figures[detector], "members": {name: row for name, row in figures.items() if name != detector}}
    for name, row in figures.items():
        point = row["operating_point"]
        print(f"{name}: AP@0.5 = {row['ap50']:.4f}  ({row['faces']} faces in {len(items)} images, {matching}, "
              f"max recall {row['max_recall']:.3f}); at the score threshold {operating_threshold}: precision "
              f"{point['precision']:.3f}, recall {point['recall']:.3f}")
        if row["by_face_px"]:
            print("    by face width: " + "; ".join(f"{size['face_px']} px AP {size['ap50']:.3f} recall "
                                                    f"{size['recall']:.3f} ({size['faces']})"
                                                    for size in row["by_face_px"]))
    plot = Path(plot) if plot else (Path(out).with_suffix(".pr.png") if out else Path("pr_curve.png"))
    plot.parent.mkdir(parents=True, exist_ok=True)
    plot_precision_recall(curves, plot, title=f"{Path(data).parent.name}/{Path(data).name}")
    results["plot"] = str(plot)
    print(f"precision-recall curve: {plot}")
    if results["by_face_px"]:
        by_size_plot = plot.with_name(plot.name.replace(".pr.png", "").replace(".png", "") + ".by_size.png")
        plot_recall_by_size({name: row["by_face_px"] for name, row in figures.items()}, by_size_plot,
                            f"recall at score {operating_threshold}")
        results["plot_by_size"] = str(by_size_plot)
        print(f"recall by face size: {by_size_plot}")
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
                        device: str = "cpu", min_face_px: str | None = None,
                        score_threshold: float = AP_SCORE_THRESHOLD, iou: float = 0.5,
                        out: str | Path | None = None, plot: str | Path | None = None,
                        set_items: Sequence[str] = ()) -> WiderResult:
    """Score the prediction folder ``predictions`` (``<event>/<image>.txt``) against WIDER FACE val; with
    ``images`` (WIDER_val/images) it is first written by ``detector``. Writes the JSON report (``out``) and the
    PR curves (``plot``)."""
    gt_dir = Path(wider_gt) if wider_gt else DEFAULT_GROUND_TRUTH
    ground_truth = load_ground_truth(gt_dir)
    results = {"benchmark": "wider", "predictions": str(predictions), "ground_truth": str(gt_dir)}
    if images:
        cfg = _benchmark_config(detector, config, weights, min_face_px, score_threshold, set_items)
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
