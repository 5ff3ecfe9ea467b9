"""Shared fixtures. Slow end-to-end tests run in CI (CI=true) or with --run-slow; a plain local run skips them."""
from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", help="also run tests marked slow (CI always does)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-slow") or os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        return
    skip = pytest.mark.skip(reason="slow: runs in CI, or locally with --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def shared_path(*parts: str) -> Path:
    """A path under ../shared, or skip the test with a message saying what is missing."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent: the real-data tests need the project's ../shared folder")
    return path


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header states width x height and holds no pixels: what Pillow's decompression-bomb check reads."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
    return path


def broken_copies(folder: Path, real_file: Path, keep_bytes: int) -> tuple[Path, Path]:
    """(a text file, the first ``keep_bytes`` of ``real_file``) in ``folder``: what an importer must refuse."""
    text, truncated = folder / "notes.dat", folder / "truncated.dat"
    text.write_text("this is not a model\n")
    truncated.write_bytes(real_file.read_bytes()[:keep_bytes])
    return text, truncated


def assert_embedder_trains(model, input_size: int, embedding_dim: int, first: str, last: str) -> None:
    """A backward pass through an imported embedder network (in train mode) gives finite gradients everywhere and
    non-zero ones on its ``first`` and ``last`` weights."""
    torch.manual_seed(0)
    out = model.train()(torch.randn(2, 3, input_size, input_size))
    assert out.shape == (2, embedding_dim)
    out.pow(2).sum().backward()
    grads = {name: parameter.grad for name, parameter in model.named_parameters()}
    assert all(grad is not None and torch.isfinite(grad).all() for grad in grads.values())
    assert grads[first].abs().sum() > 0 and grads[last].abs().sum() > 0
