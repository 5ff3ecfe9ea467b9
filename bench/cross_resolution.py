"""Cross-resolution LFW View 2: accuracy against the width of the second photo's face, for every embedder, from
the reports of ``evaluate.py --benchmark lfw --flip [--probe-face-px N]`` kept in ``bench/accuracy/
cross_resolution/`` (one JSON per embedder and width; the README's table and curve come from them).

    python -m bench.cross_resolution                 # the markdown table and the PNG from the stored reports
    python -m bench.cross_resolution --run           # first run the evaluations whose report is missing (CPU hours)
    python -m bench.cross_resolution --run --student runs/embedding/small_faces/checkpoints/omz_reid_0095_best.pth

Published embedders are scored on all 10 folds; a student trained on the people of folds 1-9 only on fold 10
(600 pairs, the threshold fitted on folds 1-9), as ``evaluate.py`` enforces.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import evaluate
from common.cli import run_cli
from common.lfw import REPORT_FOLD

RESULTS = Path(__file__).resolve().parent / "accuracy" / "cross_resolution"
EMBEDDERS = ("dlib_resnet", "omz0095", "sface", "dlib_resnet+omz0095+sface")
WIDTHS = (None, 48, 32, 24, 16)  # None: the photos as they are (faces ~100-120 px)
FULL_X = 100  # where the full-size point sits on the plot's width axis
STUDENT = "omz0095 student"


def report_name(series: str, width: int | None) -> str:
    return f"{series.replace(' ', '_')}_{width or 'full'}.json"


def run_missing(results: Path, student: str | None) -> None:
    """Run ``evaluate.py`` for every (series, width) without a report in ``results``."""
    # the widths of a class photo's back rows first, so that a stopped run leaves the telling part of the curve
    order = (24, 16, None, 32, 48)
    runs = [("omz0095", student, STUDENT, width) for width in order] if student else []
    runs += [(embedder, None, embedder, width) for width in order for embedder in EMBEDDERS]
    for embedder, weights, series, width in runs:
        out = results / report_name(series, width)
        if out.is_file():
            continue
        argv = ["--benchmark", "lfw", "--embedder", embedder, "--flip", "--out", str(out)]
        argv += ["--weights", weights, "--folds", str(REPORT_FOLD)] if weights else []
        argv += ["--probe-face-px", str(width)] if width else []
        print("python evaluate.py " + " ".join(argv))
        if evaluate.main(argv) != 0:
            raise RuntimeError(f"evaluate.py failed for {series} at {width or 'full'} px")


def load(results: Path) -> dict[str, dict[int | None, dict]]:
    """series → width → report, for the reports in ``results``."""
    table: dict[str, dict[int | None, dict]] = {}
    for path in sorted(results.glob("*.json")):
        report = json.loads(path.read_text(encoding="utf-8"))
        series = STUDENT if report["weights"] else report["embedder"]
        if len(report["test_folds"]) < 10:  # apart from the same embedder's 10-fold figures
            series += f", fold {', '.join(map(str, report['test_folds']))}"
        table.setdefault(series, {})[report["probe_face_px"]] = report
    return table


def markdown(table: dict[str, dict[int | None, dict]]) -> str:
    header = "| embedder (flip) | " + " | ".join(f"{w} px" if w else "full size" for w in WIDTHS) + " |"
    lines = [header, "|" + "---|" * (len(WIDTHS) + 1)]
    for series, reports in table.items():
        cells = []
        for width in WIDTHS:
            report = reports.get(width)
            if report is None:
                cells.append("")
                continue
            spread = f" ± {100 * report['accuracy_std']:.2f}" if len(report["test_folds"]) > 1 else ""  # one fold: none
            cells.append(f"{100 * report['accuracy_mean']:.2f}{spread} / {report['tar_at_far_1e-3']:.3f}")
        lines.append(f"| {series} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(table: dict[str, dict[int | None, dict]], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for series, reports in table.items():
        widths = sorted(reports, key=lambda width: width or FULL_X)
        x = [width or FULL_X for width in widths]
        axis.errorbar(x, [100 * reports[w]["accuracy_mean"] for w in widths],
                      yerr=[100 * reports[w]["accuracy_std"] for w in widths], marker="o", capsize=3, label=series)
    ticks = sorted(width for width in WIDTHS if width) + [FULL_X]
    axis.set_xscale("log")
    axis.set_xticks(ticks, [str(t) for t in ticks[:-1]] + ["full"])
    axis.minorticks_off()
    axis.set_xlabel("second photo's face width (px)")
    axis.set_ylabel("LFW View 2 accuracy (%), mean ± std over folds")
    axis.grid(alpha=0.3)
    axis.legend()
    axis.set_title("cross-resolution LFW (area-shrunk, JPEG 90)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder of the reports")
    parser.add_argument("--run", action="store_true", help="run the evaluations whose report is missing")
    parser.add_argument("--student", help="with --run: a small-face student's checkpoint (scored on fold 10)")
    args = parser.parse_args(argv)
    if args.student and not args.run:
        parser.error("--student needs --run (it names the checkpoint to evaluate)")
    args.results.mkdir(parents=True, exist_ok=True)
    if args.run:
        run_missing(args.results, args.student)
    table = load(args.results)
    if not table:
        parser.error(f"no reports in {args.results}; make them with --run")
    print("accuracy (%) mean ± std over the folds / TAR@FAR=1e-3")
    print(markdown(table))
    plot(table, args.results.parent / "cross_resolution.png")
    print(f"curve: {args.results.parent / 'cross_resolution.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
