"""Wall time per phase of a run and its peak memory (summary.json's ``wall_seconds``, ``memory``)."""

from __future__ import annotations

import contextlib
import resource
import sys
import time
from collections.abc import Iterator

import torch


def peak_memory() -> dict[str, float]:
    """Peak resident host memory of this process (MiB) and peak GPU memory if any."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    host_mib = rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024
    out = {"host_peak_mib": round(host_mib, 1)}
    if torch.cuda.is_available():
        out["gpu_peak_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


class PhaseTimer:
    """Wall seconds per named phase (accumulated)."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.phases: dict[str, float] = {}

    def add(self, name: str, seconds: float) -> None:
        self.phases[name] = round(self.phases.get(name, 0.0) + seconds, 3)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Adds the block's wall time to ``name`` (when it finishes)."""
        t0 = time.perf_counter()
        yield
        self.add(name, time.perf_counter() - t0)

    def total(self) -> float:
        return round(time.perf_counter() - self.start, 3)
