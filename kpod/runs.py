"""Run-directory layout, metrics writer, summary, and checkpoint discovery.

::

    RUN_DIR/
      recipe.resolved.yaml   the validated recipe with every default
      metrics.jsonl          one JSON object per logged event
      predictions.jsonl      one row per evaluated sample (sample_id, prompt, output, …)
      summary.json           accuracy per split, wall times, peak memory, seed, version
      plan.json              the curriculum plan (c per sample_id per stage)
      checkpoints/step-NNNNNNN/{model.pt, optimizer.pt, lr_scheduler.pt, rng.pt, state.json}
"""

from __future__ import annotations

import json
import math
import os
import resource
import shutil
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import torch


class RunDirError(RuntimeError):
    """The run directory cannot be used as asked (exists, unwritable, …)."""


def prepare_run_dir(path: Path, *, resume: bool, overwrite: bool) -> Path:
    if path.exists() and any(path.iterdir()) and not (resume or overwrite):
        raise RunDirError(
            f"{path} already holds a run; pass --resume to continue it or --overwrite to replace it"
        )
    if overwrite and path.exists() and not resume:
        shutil.rmtree(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write_test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise RunDirError(f"cannot write to run directory {path}: {e.strerror}") from None
    return path


def unique_tmp(path: Path) -> Path:
    """A sibling temporary name no other process uses (pid + random), for write-then-rename."""
    return path.with_name(f"{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def atomic_write_text(path: Path, text: str) -> None:
    """Write to a unique temporary file, fsync, then rename over ``path`` (atomic on POSIX)."""
    tmp = unique_tmp(path)
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


class MetricsWriter:
    """Appends one JSON object per line to ``metrics.jsonl`` (flushed per write)."""

    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path = path
        self.enabled = enabled

    def write(self, **event: Any) -> None:
        """Non-finite floats are written as null (strict JSON)."""
        if not self.enabled:
            return
        event = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in event.items()}
        event.setdefault("time", round(time.time(), 3))
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(event) + "\n")


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    done = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-") and (p / "state.json").exists()]
    return sorted(done, key=lambda p: int(p.name.split("-")[1]))


def last_checkpoint(run_dir: Path) -> Path | None:
    dirs = checkpoint_dirs(run_dir)
    return dirs[-1] if dirs else None


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

    def total(self) -> float:
        return round(time.perf_counter() - self.start, 3)
