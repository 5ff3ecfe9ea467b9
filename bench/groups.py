"""The group-photo detection benchmark's figures (``evaluate.py --benchmark detection --data groups``, report split:
LFW fold 10's people, seeds from 1000) from the reports kept in ``bench/accuracy/groups/``; the README's tables and
the recall-by-face-size curve come from them.

    python -m bench.groups           # the markdown tables and bench/accuracy/groups.png from the stored reports
    python -m bench.groups --run     # first run what is missing (a few minutes on 2 cores)

- ``fusion_report.json``: the default fused detector (``configs/pipeline.yaml``), with its members' own figures on
  their calibrated scores at the fusion's threshold;
- ``retinaface_report.json`` / ``yunet_report.json``: RetinaFace / YuNet alone, tiles planned down to 20-px faces,
  at its own threshold;
- ``blazeface_front_report.json`` / ``blazeface_full_report.json``: BlazeFace alone with its config's defaults
  (tiles planned down to 20-px faces, score 0.75), short range and full range;
- ``blind_*.json``: the fusion with BlazeFace on the whole photo only (no tiles: blind to every face of these
  photos), its calibration fitted on the tune split as the detection stage does, once with abstention
  (``competent_recall`` 0.5, the default) and once without (0: every detector counts everywhere);
- ``passes.json``: the tile planner's passes for each detector at 1080p and 4K, and seconds per photo measured
  on the report photos of that size (context only: speed claims live in the other benches as ratios).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

import evaluate
from common.cli import run_cli
from common.config import load_yaml
from common.io import read_image
from common.metrics import size_bin_labels
from common.tiling import plan_passes
from detection.evaluation import DETECTION_SIZE_BINS, load_benchmark
from pipeline.build import build_detector
from pipeline.config import PIPELINE_CONFIG, pipeline_config
from pipeline.group_photos import GROUPS, generate_groups, groups_config
from pipeline.training import fit_fusion_calibration

RESULTS = Path(__file__).resolve().parent / "accuracy" / "groups"
PLOT = RESULTS.parent / "groups.png"
SIZES = ((1920, 1080), (3840, 2160))
BLIND_BLAZEFACE = ["inference.score_threshold=0.3", "inference.min_face_px=null"]
GOAL_FROM_PX = 24     # the goals hold per face-size bin from this width up
GOAL_PRECISION = 0.97


def _evaluate(out: Path, argv: list[str]) -> None:
    argv = ["--benchmark", "detection", "--data", GROUPS, "--split", "report", "--out", str(out), *argv]
    print("python evaluate.py " + " ".join(argv))
    if evaluate.main(argv) != 0:
        raise RuntimeError(f"evaluate.py failed for {out.name}")


def run_blind(results: Path) -> None:
    """The abstention's effect: BlazeFace without tiles in the fusion, with and without abstention."""
    calibration = results / "blind_blazeface.calibration.json"
    with tempfile.TemporaryDirectory() as folder:
        cfg = load_yaml(PIPELINE_CONFIG)
        cfg["detection"]["blazeface"]["set"] = BLIND_BLAZEFACE
        if not calibration.is_file():
            fitting = pipeline_config(PIPELINE_CONFIG, [f"detection.blazeface.set=[{','.join(BLIND_BLAZEFACE)}]",
                                                        "detection.detectors=[blazeface]",
                                                        f"calibration.out_dir={folder}"])
            Path(fit_fusion_calibration(fitting)["blazeface"]).replace(calibration)
        cfg["detection"]["blazeface"]["calibration"] = str(calibration)
        for name, competent_recall in (("blind_abstain.json", 0.5), ("blind_counted.json", 0.0)):
            if (results / name).is_file():
                continue
            cfg["detection"]["fusion"]["competent_recall"] = competent_recall
            config = Path(folder) / "pipeline.yaml"
            config.write_text(yaml.safe_dump(cfg), encoding="utf-8")
            _evaluate(results / name, ["--detector", "fusion", "--config", str(config)])


def run_passes(results: Path) -> None:
    """Passes, tiles and input megapixels the planner gives each detector at 1080p and 4K, and seconds per
    report photo of that size."""
    items = load_benchmark(generate_groups(groups_config(), "report"))
    detectors = {"blazeface": build_detector("blazeface", set_items=["inference.min_face_px=20"]),
                 "blazeface full range": build_detector("blazeface", set_items=["inference.min_face_px=20",
                                                                                 "model.variant=full"]),
                 "retinaface": build_detector("retinaface", set_items=["inference.min_face_px=20"]),
                 "yunet": build_detector("yunet", set_items=["inference.min_face_px=20"]),
                 "mtcnn": build_detector("mtcnn", set_items=["inference.min_face_px=20"])}
    figures = {}
    for width, height in SIZES:
        photos = [read_image(item["image_path"]) for item in items if f"_{width}x{height}." in item["image_path"].name]
        for name, detector in detectors.items():
            seconds = []
            for photo in photos:
                start = time.perf_counter()
                detector.detect([photo])
                seconds.append(time.perf_counter() - start)
            row = {"photos": len(photos), "seconds_per_photo": round(statistics.median(seconds), 2)}
            if name != "mtcnn":  # MTCNN does not tile: its image pyramid covers every face size
                fixed_input = not hasattr(detector, "max_input_side")  # BlazeFace letterboxes every tile
                side = detector.anchors.input_size if fixed_input else detector.max_input_side
                passes = plan_passes(height, width, 20, detector.face_px, side)
                pixels = sum(side * side if fixed_input else (x2 - x1) * (y2 - y1) * look.scale ** 2
                             for look in passes for x1, y1, x2, y2 in look.tiles)
                row.update(passes=len(passes), tiles=[len(look.tiles) for look in passes],
                           scales=[round(look.scale, 3) for look in passes],
                           input_megapixels=round(pixels / 1e6, 1))
            figures[f"{name} {width}x{height}"] = row
            print(name, width, height, row)
    (results / "passes.json").write_text(json.dumps(figures, indent=1), encoding="utf-8")


def run_missing(results: Path) -> None:
    results.mkdir(parents=True, exist_ok=True)
    if not (results / "fusion_report.json").is_file():
        _evaluate(results / "fusion_report.json", ["--detector", "fusion"])
    for name in ("retinaface", "yunet"):
        if not (results / f"{name}_report.json").is_file():
            _evaluate(results / f"{name}_report.json", ["--detector", name, "--min-face-px", "20"])
    for variant in ("front", "full"):
        if not (results / f"blazeface_{variant}_report.json").is_file():
            _evaluate(results / f"blazeface_{variant}_report.json",
                      ["--detector", "blazeface", "--set", f"model.variant={variant}"])
    run_blind(results)
    if not (results / "passes.json").is_file():
        run_passes(results)


def series(results: Path) -> dict[str, dict]:
    """Column name → figures (``ap50``, ``operating_point``, ``by_face_px``) of every single detector and the
    fusion, from the stored reports."""
    def load(name: str) -> dict:
        return json.loads((results / f"{name}_report.json").read_text(encoding="utf-8"))

    fusion = load("fusion")
    threshold = fusion["operating_point"]["score_threshold"]
    columns = {f"{name} (calibrated, ≥ {threshold})": figures for name, figures in fusion["members"].items()}
    for name, label in (("blazeface_front", "BlazeFace short range"), ("blazeface_full", "BlazeFace full range"),
                        ("retinaface", "RetinaFace"), ("yunet", "YuNet")):
        report = load(name)
        columns[f"{label} alone (≥ {report['operating_point']['score_threshold']})"] = report
    columns[f"fusion {'+'.join(fusion['members'])} (default, ≥ {threshold})"] = fusion
    return columns


def _cell(figures: dict) -> str:
    return f"{figures['ap50']:.3f} / {figures['recall']:.3f}"


def markdown(results: Path) -> str:
    """The per-size table, the abstention table and the planner's passes."""
    columns = series(results)
    lines = ["| face width (px) | faces | " + " | ".join(columns) + " |", "|" + "---|" * (len(columns) + 2)]
    first = next(iter(columns.values()))
    for index, row in enumerate(first["by_face_px"]):
        lines.append(f"| {row['face_px']} | {row['faces']} | "
                     + " | ".join(_cell(figures["by_face_px"][index]) for figures in columns.values()) + " |")
    lines.append(f"| all | {first['faces']} | " + " | ".join(
        f"{figures['ap50']:.3f} / {figures['operating_point']['recall']:.3f} (precision "
        f"{figures['operating_point']['precision']:.3f})" for figures in columns.values()) + " |")
    blind = {name: json.loads((results / f"blind_{name}.json").read_text(encoding="utf-8"))
             for name in ("counted", "abstain")}
    lines += ["", "| BlazeFace without tiles + MTCNN | " + " | ".join(size_bin_labels(DETECTION_SIZE_BINS))
              + " | all |", "|" + "---|" * (len(DETECTION_SIZE_BINS) + 2)]
    for name, label in (("counted", "absence counted (competent_recall 0)"), ("abstain", "abstaining (default)")):
        report = blind[name]
        lines.append(f"| {label} | " + " | ".join(f"{row['recall']:.3f}" for row in report["by_face_px"])
                     + f" | {report['operating_point']['recall']:.3f} |")
    passes = json.loads((results / "passes.json").read_text(encoding="utf-8"))
    lines += ["", "| detector, photo | passes (tiles each) | input megapixels | seconds per photo |",
              "|---|---|---|---|"]
    for key, row in passes.items():  # detector, photo size
        shape = (f"{row['passes']} ({', '.join(map(str, row['tiles']))})" if "passes" in row
                 else "image pyramid (no tiles)")
        lines.append(f"| {key} | {shape} | {row.get('input_megapixels', '')} | {row['seconds_per_photo']} |")
    return "\n".join(lines)


def goals(results: Path) -> list[str]:
    """The unmet goals (empty when every one holds): from ``GOAL_FROM_PX`` up, in every size bin, the fusion's AP
    and recall at its operating point at least every single detector's, at precision ≥ ``GOAL_PRECISION``."""
    columns = list(series(results).values())
    fusion, singles = columns[-1], columns[:-1]
    unmet = []
    for index, row in enumerate(fusion["by_face_px"]):
        low = float(row["face_px"].split("-")[0].lstrip(">="))
        if low < GOAL_FROM_PX:
            continue
        for key in ("ap50", "recall"):
            best = max(single["by_face_px"][index][key] for single in singles)
            if row[key] < best:
                unmet.append(f"{row['face_px']} px: fused {key} {row[key]} < best single {best}")
        if row["precision"] < GOAL_PRECISION:
            unmet.append(f"{row['face_px']} px: fused precision {row['precision']} < {GOAL_PRECISION}")
    return unmet


def plot(results: Path, path: Path) -> None:
    from common.metrics import plot_recall_by_size
    plot_recall_by_size({name: figures["by_face_px"] for name, figures in series(results).items()}, path,
                        "group photos, report split: recall at the operating point")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", action="store_true", help="first run the evaluations whose report is missing")
    parser.add_argument("--results", default=str(RESULTS), help="folder of the reports (default: %(default)s)")
    parser.add_argument("--plot", default=str(PLOT), help="recall-by-face-size PNG (default: %(default)s)")
    args = parser.parse_args(argv)
    results = Path(args.results)
    if args.run:
        run_missing(results)
    print(markdown(results))
    plot(results, Path(args.plot))
    unmet = goals(results)
    print("\ngoals: " + ("all met" if not unmet else "; ".join(unmet)))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
