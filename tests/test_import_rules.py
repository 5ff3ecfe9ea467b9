"""The layers point down: every import of a project package, function-level ones included, is allowed by the
table below (the architecture issue's), and a failure names the file and the line."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tests.conftest import ROOT

PACKAGES = ("common", "detection", "embedding", "fusion", "matching", "pipeline", "classroom")
CLIS = ("train", "evaluate", "infer", "attendance")
ALLOWED = {
    "common": set(),
    "detection": {"common"},
    "embedding": {"common"},
    "matching": {"common"},
    "fusion": {"common"},
    "pipeline": {"common", "detection", "embedding", "fusion", "matching"},
    "classroom": {"common", "matching", "pipeline"},
    **{cli: {"pipeline", "classroom", "common"} for cli in CLIS},
}


def project_imports(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """(line, imported project module) for every import statement in ``path``, at any depth."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = path.relative_to(root).with_suffix("").parts
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolved against the file's own package
                base = package[:-node.level]
                names = [".".join([*base, *([node.module] if node.module else [])])]
            else:
                names = [node.module]
        else:
            continue
        found += [(node.lineno, name) for name in names if name.split(".")[0] in (*PACKAGES, *CLIS)]
    return found


def layer_of(path: Path, root: Path = ROOT) -> str:
    relative = path.relative_to(root)
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def checked_files() -> list[Path]:
    files = [path for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))]
    return files + [ROOT / f"{cli}.py" for cli in CLIS]


def violations(files, root: Path = ROOT) -> list[str]:
    found = []
    for path in files:
        layer = layer_of(path, root)
        for line, module in project_imports(path, root):
            target = module.split(".")[0]
            if target != layer and target not in ALLOWED[layer]:
                found.append(f"{path.relative_to(root)}:{line}: {layer} imports {module} "
                             f"(allowed: {', '.join(sorted(ALLOWED[layer])) or 'no project package'})")
    return found


def test_every_import_points_down():
    assert not violations(checked_files()), "\n".join(violations(checked_files()))


def test_a_violation_is_named_with_file_and_line(tmp_path):
    (tmp_path / "common").mkdir()
    bad = tmp_path / "common" / "thing.py"
    bad.write_text("import numpy\n\n\ndef f():\n    from pipeline.build import build_detector\n")
    assert violations([bad], tmp_path) == [
        "common/thing.py:5: common imports pipeline.build (allowed: no project package)"]


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_every_layer_exists(layer):
    assert (ROOT / layer).is_dir() or (ROOT / f"{layer}.py").is_file()


def measured_edges() -> set[tuple[str, str]]:
    """(importer, imported) package pairs as the code has them; the four CLIs count as one node, "CLIs"."""
    edges = set()
    for path in checked_files():
        layer = layer_of(path)
        for _, module in project_imports(path):
            target = module.split(".")[0]
            if target != layer:
                edges.add(("CLIs" if layer in CLIS else layer, target))
    return edges


def readme_edges() -> set[tuple[str, str]]:
    """The arrows of the README's mermaid picture of the package imports (``A --> b & c``)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = readme[readme.index("```mermaid"):]
    block = block[:block.index("```", 3)]
    edges = set()
    for source, targets in re.findall(r"^\s*(\w+)(?:\[.*?\])?\s*-->\s*(.+)$", block, re.M):
        edges |= {(source, target.strip()) for target in targets.split("&")}
    return edges


def test_readme_picture_shows_the_measured_imports():
    assert readme_edges() == measured_edges()
