"""Timing helpers shared by the benchmarks: alternating best-of-N timing, and glibc heap tuning."""
from __future__ import annotations

import ctypes
import ctypes.util
import json
import time
from pathlib import Path
from typing import Callable, Dict


def keep_freed_memory_in_heap() -> bool:
    """Eager PyTorch allocates every activation afresh; glibc hands large blocks back to the OS and
    page-faults them in again on the next call (20-35% system time measured here). Raising glibc's
    mmap/trim thresholds keeps them in the heap. Same as exporting MALLOC_MMAP_THRESHOLD_ and
    MALLOC_TRIM_THRESHOLD_. Returns False where libc is not glibc."""
    libc_name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(libc_name) if libc_name else None
    if libc is None or not hasattr(libc, "mallopt"):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc.mallopt(m_mmap_threshold, 1 << 30) and libc.mallopt(m_trim_threshold, 1 << 30))


def best_seconds(runs: Dict[str, Callable[[], object]], repeats: int, warmup: int = 2) -> Dict[str, float]:
    """Best wall time of each runner. Runners are timed in alternation, so a slow phase of a shared
    machine hits all of them rather than biasing the ratio."""
    for run in runs.values():
        for _ in range(warmup):
            run()
    best = {name: float("inf") for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def report(results: dict, out: Path | None) -> dict:
    """Print one ``name value`` line per figure and, with ``out``, write them all to a JSON file."""
    for key, value in results.items():
        print(f"{key:36s} {value:.4g}" if isinstance(value, float) else f"{key:36s} {value}")
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2))
    return results
