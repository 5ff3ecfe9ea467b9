"""The README's Python example runs as shown, on a real photo, and prints what its comments say; CI runs the
README's test command."""
from __future__ import annotations

import re
import subprocess
import sys

from tests.conftest import ROOT, shared_path


def python_example() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("### Python\n"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_python_example_runs_on_a_real_photo():
    shared_path("data", "detection", "dlib_faces", "2008_002470.jpg")  # skips without ../shared
    code = python_example()
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    promised = re.findall(r"^print\(list_\w+\(\)\)\s+# (.*)$", code, re.M)
    assert lines[:2] == promised  # the registered names, as the comments say
    # the default embedder, dlib_resnet + omz0095 + sface: dlib's 150-px chips, 128 + 256 + 128 values
    faces = [line for line in lines[2:] if line.startswith("[") and "(150, 150, 3) (512,)" in line]
    assert faces, result.stdout  # at least one face with its chip and embedding
    count, shape = re.fullmatch(r"(\d+) \((\d+), 128\)", lines[-1]).groups()
    assert int(count) == int(shape) >= len(faces) - 1  # MTCNN's faces, each embedded


def test_ci_runs_the_readme_test_command_with_the_slow_tests_itself():
    """CI must not depend on the runner exporting CI=true: ``.ci/run`` passes ``--run-slow``, as the README says."""
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    commands = [line for line in ci.splitlines() if line.startswith("python -m pytest")]
    assert commands == ["python -m pytest -q --run-slow"]
    assert f"{commands[0]}   # everything, as CI runs it" in (ROOT / "README.md").read_text(encoding="utf-8")


def readme_units() -> list[str]:
    """The README's table rows, list items and paragraphs: the units a figure is read in."""
    units = []
    for block in (ROOT / "README.md").read_text(encoding="utf-8").split("\n\n"):
        if block.lstrip().startswith("|"):
            units += block.splitlines()
        else:
            units += re.split(r"\n(?=- )", block)
    return units


def test_every_compreface_detection_figure_says_it_counts_nose_points():
    """CompreFace faces are marked by a nose point: a box holding one is a hit whatever its size, so its AP,
    precision and recall say a face was found, not how well it was boxed; every figure says so where it stands."""
    unsaid = [unit[:120] for unit in readme_units()
              if re.search(r"compreface", unit, re.I) and re.search(r"\bAP\b|precision|recall", unit)
              and "nose" not in unit.lower()]
    assert unsaid == []


def test_the_readme_speed_table_is_the_committed_benchmark_run():
    """No speed figure of the suite is typed by hand: the README's table and bench/results.md are what
    ``python -m bench.run_all`` made of bench/results.json (which names its date, machine and commands)."""
    import json

    from bench import run_all

    results = json.loads((ROOT / "bench" / "results.json").read_text(encoding="utf-8"))
    table = run_all.markdown(results)
    assert (ROOT / "bench" / "results.md").read_text(encoding="utf-8") == table
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert run_all.readme_with_table(readme, table) == readme, "run python -m bench.run_all --render"
    assert not results["meta"]["quick"] and all("error" not in entry for entry in results["benches"].values())


def test_the_readme_demo_row_is_the_committed_report_split_run():
    """The attendance demo's row reports the committed run of the report split (fold 10's people, seeds from 1000),
    with its counts and 95 % intervals."""
    import json

    figures = json.loads((ROOT / "bench" / "accuracy" / "demo" / "report30.json").read_text(encoding="utf-8"))
    assert figures["split"] == "report" and figures["people"] == "LFW folds [10]" and figures["first_seed"] == 1000
    [row] = [unit for unit in readme_units() if unit.startswith("| **attendance demo, report split**")]
    for count, of in (("present_marked", "present"), ("present_marked", "marks"), ("absent_marked", "absent"),
                      ("strangers_marked", "strangers")):
        low, high = figures["ci95"][f"{count}/{of}"]
        assert f"{figures[count]}/{figures[of]}" in row
        for bound in (low, high):  # as the README writes a percentage: 99.5, 100, 0, 2.5
            assert f"{bound:.1%}"[:-1].rstrip("0").rstrip(".") in row
    assert f"{figures['classes']} classes" in row
