"""Run every speed benchmark, each against its reference in the same run, and write one table for the README (between
its speed-table markers: no speed figure there is typed by hand).

    python -m bench.run_all [--threads 2] [--quick] [--only mtcnn retinaface] [--out-dir bench/]
    python -m bench.run_all --render    # results.md and the README's table again from results.json

Each ``bench/bench_<name>.py`` runs in its own process (its thread count and heap tuning stay its own) and writes
its figures as JSON; this collects them into ``results.json`` (every figure, the command that produced it, its
wall time, or the error) and ``results.md`` (item, ours, reference, ratio, goal, met?). ``--quick`` runs fewer
repeats on smaller batches, to check that everything runs: its figures are not the ones to publish. A benchmark
that fails is reported in both files and makes the exit status 1; the others still run.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
LOG_TAIL = 2000  # characters of a failed benchmark's output kept in results.json


@dataclass(frozen=True)
class Goal:
    """``at_least``: the ratio must reach it; ``at_most``: our figure must not exceed it."""

    at_least: float | None = None
    at_most: float | None = None

    def text(self, unit: str) -> str:
        return f"≥ {self.at_least:g}×" if self.at_least is not None else f"≤ {self.at_most:g} {unit}".strip()

    def met(self, ours: float, ratio: float | None) -> bool:
        if self.at_least is not None:
            return ratio is not None and ratio >= self.at_least
        return ours <= self.at_most


@dataclass(frozen=True)
class Row:
    """One line of the table: ``ratio`` is how many times better ours is than the reference (faster, or higher)."""

    item: str
    ours: float
    unit: str
    reference: float | None = None
    reference_name: str = ""
    ratio: float | None = None
    goal: Goal | None = None

    def as_dict(self) -> dict:
        return {"item": self.item, "ours": self.ours, "unit": self.unit, "reference": self.reference,
                "reference_name": self.reference_name, "ratio": self.ratio,
                "goal": self.goal.text(self.unit) if self.goal else None,
                "met": self.goal.met(self.ours, self.ratio) if self.goal else None}


@dataclass(frozen=True)
class Bench:
    """``python -m <module> --threads N [quick_args] --out FILE`` and the table rows of the JSON it writes."""

    module: str
    quick_args: tuple[str, ...]
    rows: Callable[[dict], list[Row]]


def _rate_row(item, ours, reference, reference_name, unit, goal=None) -> Row:
    """Rates (higher is better): the ratio is ours / reference."""
    return Row(item, ours, unit, reference, reference_name, ours / reference, goal)


def _time_row(item, ours, reference, reference_name, unit, goal=None) -> Row:
    """Times (lower is better): the ratio is reference / ours."""
    return Row(item, ours, unit, reference, reference_name, reference / ours, goal)


def blazeface_rows(r: dict) -> list[Row]:
    return [_rate_row(f"BlazeFace front, batch {r['batch']}, BN folded, channels_last", r["torch_eager_img_per_s"],
                      r["tflite_img_per_s"], "TFLite interpreter, one image per invoke", "img/s", Goal(at_least=1.5))]


def mtcnn_rows(r: dict) -> list[Row]:
    rows = [_time_row(f"MTCNN, one {size} photo", r[f"{size}_ours_s"], r[f"{size}_facenet_s"],
                      "facenet-pytorch MTCNN", "s", Goal(at_least=1.5) if size == "1920x1080" else None)
            for size in ("1920x1080", "640x480")]
    batch = next(key for key in r if key.startswith("lfw") and key.endswith("_ours_img_per_s"))
    prefix = batch.removesuffix("_ours_img_per_s")
    rows.append(_rate_row(f"MTCNN, batch of {prefix.removeprefix('lfw')} LFW photos", r[batch],
                          r[f"{prefix}_facenet_img_per_s"], "facenet-pytorch MTCNN", "img/s"))
    return rows


def retinaface_rows(r: dict) -> list[Row]:
    rows = [_rate_row("RetinaFace MobileNet-0.25 at 640x480, onnxruntime vs PyTorch, whole detector",
                      r["640x480/onnxruntime_detector_img_per_s"], r["640x480/torch_detector_img_per_s"],
                      "same detector, PyTorch", "img/s"),
            _rate_row("RetinaFace MobileNet-0.25 at 640x480, onnxruntime vs PyTorch, network alone",
                      r["640x480/onnxruntime_network_img_per_s"], r["640x480/torch_network_img_per_s"],
                      "same network, PyTorch", "img/s")]
    for photo_set in ("dlib", "compreface"):
        key = f"{photo_set}/retinaface_ms_per_photo"
        if key in r:
            rows.append(_time_row(f"RetinaFace MobileNet-0.25 (longer side 640), {photo_set} photos", r[key],
                                  r[f"{photo_set}/mtcnn_ms_per_photo"], "our MTCNN", "ms/photo"))
    return rows


def embedder_rows(r: dict) -> list[Row]:
    rates = r["images_per_second"]
    return [_rate_row(f"FaceNet InceptionResnetV1 (ours, BN folded, channels_last), batch {r['batch']}",
                      rates["ours_fused_channels_last"], rates["facenet_pytorch"], "facenet-pytorch", "img/s",
                      Goal(at_least=1.3)),
            _rate_row(f"MobileFaceNet (BN folded, channels_last), batch {r['batch']}",
                      rates["mobilefacenet_fused_channels_last"], rates["facenet_pytorch"],
                      "facenet-pytorch FaceNet", "img/s")]


def dlib_rows(r: dict) -> list[Row]:
    rates = r["images_per_s"]
    return [_rate_row(f"dlib ResNet (ours), {r['chips']} chips", rates["ours"], rates[name],
                      f"dlib-bin, {name.removeprefix('dlib_').replace('_', ' ')}", "img/s")
            for name in rates if name != "ours"]


def reference_embedder_rows(r: dict) -> list[Row]:
    rates = r["faces_per_s"]
    return [_rate_row(f"OMZ face-reidentification-retail-0095 (ours, PyTorch), batch {r['chips']}",
                      rates["omz0095"]["torch"], rates["omz0095"]["openvino"], "OpenVINO", "faces/s"),
            _rate_row(f"SFace int8 ONNX file, dequantised (ours, PyTorch), batch {r['chips']}",
                      rates["sface"]["torch"], rates["sface"]["onnxruntime"], "onnxruntime", "faces/s")]


def fusion_rows(r: dict) -> list[Row]:
    rows = []
    for photo_set, table in r.items():
        fused, mtcnn = table["fusion: wbf, calibrated"], table["mtcnn"]
        rows.append(_rate_row(f"fusion (calibrated WBF), precision at threshold, {photo_set}", fused["precision"],
                              mtcnn["precision"], "MTCNN alone", ""))
    return rows


def attendance_rows(r: dict) -> list[Row]:
    return [Row(f"attendance, {r['photo']} photo, {r['faces_placed']} faces, end to end", r["seconds_end_to_end"],
                "s", goal=Goal(at_most=1.5))]


GALLERY_GOAL_PEOPLE = 100_000


def gallery_rows(r: dict) -> list[Row]:
    """Per gallery size: scoring + assignment per face, and the peak memory of scoring one photo or calibrating
    the thresholds, whichever is larger (the goals are read at 100,000 people)."""
    rows = []
    for g in r["galleries"]:
        goal = g["people"] == GALLERY_GOAL_PEOPLE
        rows += [Row(f"gallery of {g['people']:,} people ({g['photos']:,} photos): scores and assignment per face "
                     "(the product's functions)", g["ms_per_face"], "ms/face",
                     goal=Goal(at_most=5.0) if goal else None),
                 Row(f"gallery of {g['people']:,} people: peak memory of a photo's scores or of calibrating the "
                     f"thresholds ({g['impostor_pairs']:,} of {g['gallery_impostor_pairs']:,} impostor pairs)",
                     max(g["calibration_peak_mb"], g["peak_mb_per_photo"]), "MB",
                     goal=Goal(at_most=2048) if goal else None)]
    return rows


BENCHES = {
    "blazeface": Bench("bench.bench_blazeface", ("--repeats", "2"), blazeface_rows),
    "mtcnn": Bench("bench.bench_mtcnn", ("--repeats", "1", "--batch", "16"), mtcnn_rows),
    "retinaface": Bench("bench.bench_retinaface", ("--repeats", "1", "--sets", "dlib"), retinaface_rows),
    "embedders": Bench("bench.bench_embedders", ("--repeats", "2", "--batch", "8"), embedder_rows),
    "dlib": Bench("bench.bench_dlib", ("--repeats", "1", "--chips", "8"), dlib_rows),
    "reference_embedders": Bench("bench.bench_reference_embedders", ("--repeats", "1", "--chips", "8"),
                                 reference_embedder_rows),
    "fusion": Bench("bench.bench_fusion", (), fusion_rows),
    "attendance": Bench("bench.bench_attendance", ("--repeats", "1"), attendance_rows),
    "gallery": Bench("bench.bench_gallery", ("--repeats", "1", "--identities", "1000", "10000"), gallery_rows),
}


def run_bench(name: str, bench: Bench, threads: int, quick: bool, scratch: Path) -> dict:
    """Run one benchmark in its own process; its figures, command, wall time, and the error if it failed."""
    out = scratch / f"{name}.json"
    command = [sys.executable, "-m", bench.module, "--threads", str(threads), *(bench.quick_args if quick else ()),
               "--out", str(out)]
    shown = " ".join(["python", *command[1:-2]])
    print(f"[{name}] {shown}", flush=True)
    start = time.perf_counter()
    finished = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    entry = {"command": shown, "seconds": round(time.perf_counter() - start, 1)}
    if finished.returncode != 0 or not out.is_file():
        output = (finished.stdout + finished.stderr)[-LOG_TAIL:]
        print(f"[{name}] FAILED (exit {finished.returncode}):\n{output}", flush=True)
        return {**entry, "error": f"exit {finished.returncode}", "output_tail": output}
    entry["figures"] = json.loads(out.read_text())
    try:
        entry["rows"] = [row.as_dict() for row in bench.rows(entry["figures"])]
    except (KeyError, StopIteration, ZeroDivisionError, TypeError) as error:
        # a benchmark whose output changed shape: keep its figures, say which key is missing
        return {**entry, "error": f"its figures lack what the table reads: {type(error).__name__}: {error}"}
    print(f"[{name}] done in {entry['seconds']} s", flush=True)
    return entry


def _figure(value: float, unit: str) -> str:
    number = f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return f"{number} {unit}".strip()


def markdown(results: dict) -> str:
    meta = results["meta"]
    lines = [f"Measured {meta['date']} on {meta['machine']}, {meta['threads']} threads"
             + (" — **--quick: a smoke run, not figures to publish**" if meta["quick"] else "")
             + f". Reproduce: `{meta['command']}` (one benchmark: its command below).", "",
             "| item | ours | reference | ratio | goal | met? | command |", "|---|---|---|---|---|---|---|"]
    for name, entry in results["benches"].items():
        if "error" in entry:
            lines.append(f"| {name}: **failed** ({entry['error']}) | — | — | — | — | — | `{entry['command']}` |")
            continue
        for row in entry["rows"]:
            reference = (f"{_figure(row['reference'], row['unit'])} ({row['reference_name']})"
                         if row["reference"] is not None else "—")
            ratio = f"{row['ratio']:.2f}×" if row["ratio"] is not None else "—"
            met = "—" if row["met"] is None else ("yes" if row["met"] else "**no**")
            lines.append(f"| {row['item']} | {_figure(row['ours'], row['unit'])} | {reference} | {ratio} | "
                         f"{row['goal'] or '—'} | {met} | `{entry['command']}` |")
    return "\n".join(lines) + "\n"


README = ROOT / "README.md"
README_START, README_END = "<!-- speed table: python -m bench.run_all writes it -->", "<!-- end of speed table -->"


def readme_with_table(readme: str, table: str) -> str:
    """``readme`` with the block between ``README_START`` and ``README_END`` replaced by ``table``."""
    start, end = readme.index(README_START) + len(README_START), readme.index(README_END)
    return f"{readme[:start]}\n{table}\n{readme[end:]}"


def write_outputs(results: dict, out_dir: Path, readme: Path | None) -> None:
    """results.json, results.md and, unless ``readme`` is None, the README's speed table: all from ``results``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    table = markdown(results)
    (out_dir / "results.md").write_text(table, encoding="utf-8")
    if readme is not None:
        readme.write_text(readme_with_table(readme.read_text(encoding="utf-8"), table), encoding="utf-8")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="fewer repeats, smaller batches: a smoke run")
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHES), help="run these benchmarks only")
    parser.add_argument("--out-dir", type=Path, default=BENCH_DIR, help="where results.json and results.md go")
    parser.add_argument("--render", action="store_true",
                        help="run nothing: write results.md and the README's table again from results.json")
    args = parser.parse_args(argv)
    if args.render:
        write_outputs(json.loads((args.out_dir / "results.json").read_text(encoding="utf-8")), args.out_dir, README)
        return 0
    names = args.only or list(BENCHES)
    command = " ".join(["python -m bench.run_all", *(argv if argv is not None else sys.argv[1:])])
    results = {"meta": {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "command": command,
                        "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores, {platform.system()}",
                        "threads": args.threads, "quick": args.quick},
               "benches": {}}
    with tempfile.TemporaryDirectory(prefix="bench_") as scratch:
        for name in names:
            results["benches"][name] = run_bench(name, BENCHES[name], args.threads, args.quick, Path(scratch))
    # the README shows the full run only: a partial (--only) or smoke (--quick) run writes its own files
    write_outputs(results, args.out_dir, README if not (args.only or args.quick) else None)
    failed = [name for name, entry in results["benches"].items() if "error" in entry]
    print(f"wrote {args.out_dir / 'results.md'} and results.json"
          + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
