"""Shared harness of the memory benchmarks (bench/loss_memory.py, bench/kd_memory.py): each side
runs in a fresh process, and what it adds to the process's peak memory is measured around the
work alone."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


class PeakMeter:
    """Seconds and peak-memory growth of the code between :meth:`start` and :meth:`stop`: the
    process's peak RSS (``ru_maxrss``) after − before on CPU, ``max_memory_allocated`` on CUDA."""

    def __init__(self, device: Any) -> None:
        self.device = device

    def start(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        self.before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        self.t = time.perf_counter()

    def stop(self) -> dict[str, float]:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize()
        wall = time.perf_counter() - self.t
        growth = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - self.before) / 1024
        if self.device.type == "cuda":
            growth = (torch.cuda.max_memory_allocated() - self.base) / 2**20
        return {"seconds": round(wall, 3), "peak_growth_mib": round(growth, 1)}


def run_sides(script: str | Path, passthrough: list[str], sides: tuple[str, ...], repeats: int,
              threads: int) -> dict[str, list[dict[str, Any]]]:
    """``script --side=S`` for every side, ``repeats`` rounds in alternating order; each child
    prints ``RESULT {json}``."""
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in sides}
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    for i in range(repeats):
        for side in (sides if i % 2 == 0 else sides[::-1]):
            p = subprocess.run([sys.executable, str(script), *passthrough, f"--side={side}"], capture_output=True,
                               text=True, check=True, env=env)
            runs[side].append(json.loads(next(x for x in p.stdout.splitlines() if x.startswith("RESULT "))[7:]))
            print(side, runs[side][-1], file=sys.stderr)
    return runs


def add_head_args(ap: Any, repeats: int) -> None:
    """The LM-head shape and run options both memory benchmarks take (SmolLM2-135M's head by default)."""
    ap.add_argument("--vocab", type=int, default=49152)
    ap.add_argument("--hidden", type=int, default=576)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--chunk", type=int, default=256, help="target tokens per chunk (the auto default)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=repeats)
    ap.add_argument("--json", type=Path, default=None)


def side_result(side: str, loss: Any, hidden: Any, weight: Any, measured: dict[str, float]) -> dict[str, Any]:
    """What a child reports: the loss and gradient norms (the sides must agree) and the measurement."""
    return {"side": side, "loss": float(loss), "grad_norm_h": float(hidden.grad.norm()),
            "grad_norm_w": float(weight.grad.norm()), **measured}
