"""Running a sweep's runs: each a plain ``kpod run`` in its own process (local child processes or
Ray tasks), skipping finished runs and resuming interrupted ones of the same recipe; a failure is
recorded, not raised."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kpod.ablate.variants import RunSpec
from kpod.engine.run_lock import PARENT_ENV
from kpod.recipe import RecipeError, dump_recipe, load_recipe

Runner = Callable[[RunSpec], tuple[int, str]]  # a spec → (exit code, the last lines of its log)
EXECUTORS = ("local", "ray")


@dataclass
class RunResult:
    spec: RunSpec
    status: str  # "done", "skipped" (already finished), "failed"
    summary: dict[str, Any] | None = None
    error: str | None = None
    wall: float = 0.0


def was_resumed(run_dir: Path) -> bool:
    """Did this run continue from a checkpoint (a ``resume`` event in its metrics log)?"""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return False
    lines = path.read_text(encoding="utf-8").splitlines()
    return any(json.loads(line).get("phase") == "resume" for line in lines if '"resume"' in line)


def ran_this_recipe(spec: RunSpec) -> bool:
    """Does the run directory hold a run of exactly the recipe this spec would run now?"""
    resolved = spec.run_dir / "recipe.resolved.yaml"
    if not resolved.exists():
        return False
    return resolved.read_text(encoding="utf-8") == dump_recipe(load_recipe(spec.variant.recipe, spec.overrides))


def is_finished(spec: RunSpec) -> bool:
    """A finished summary whose resolved recipe equals what this spec would run now."""
    summary = spec.run_dir / "summary.json"
    return summary.exists() and json.loads(summary.read_text()).get("finished") is True and ran_this_recipe(spec)


def is_resumable(spec: RunSpec) -> bool:
    """An unfinished run of exactly this recipe with a complete checkpoint (a sweep that was
    interrupted): ``kpod run --resume`` continues it, bitwise as if it had not stopped
    (docs/reliability.md), instead of starting it over."""
    from kpod.engine.checkpointing import last_checkpoint

    return last_checkpoint(spec.run_dir) is not None and ran_this_recipe(spec)


def run_spec(spec: RunSpec, threads: int | None = None) -> tuple[int, str]:
    """Run ``kpod run`` for a spec in its own process; returns (exit code, last log lines).
    An interrupted run of the same recipe is resumed from its last checkpoint; anything else in
    the run directory (another recipe, no checkpoint) is replaced."""
    spec.run_dir.mkdir(parents=True, exist_ok=True)
    resume = is_resumable(spec)
    cmd = [sys.executable, "-m", "kpod.cli", "run", str(spec.variant.recipe), "--out", str(spec.run_dir),
           "--resume" if resume else "--overwrite", "-q"]
    for o in spec.overrides:
        cmd += ["--set", o]
    env = dict(os.environ)
    env[PARENT_ENV] = str(os.getpid())  # the run ends when this process dies (kpod/engine/run_lock.py)
    if threads:  # torch reads it at start-up; the recipe (and so resume) stays unchanged
        env["OMP_NUM_THREADS"] = str(threads)
    log = spec.run_dir.parent / f"seed{spec.seed}.log"
    with open(log, "a" if resume else "w", encoding="utf-8") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
        try:
            code = proc.wait()
        except BaseException:
            proc.terminate()
            proc.wait()
            raise
    tail = "\n".join(log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-3:])
    return code, tail


def make_runner(executor: str, threads: int | None = None, ray_address: str | None = None) -> Runner:
    """``--executor local`` (:func:`subprocess_runner`) or ``ray`` (:func:`ray_runner`)."""
    if executor not in EXECUTORS:
        raise RecipeError(f"--executor {executor!r}: use 'local' or 'ray'")
    return ray_runner(ray_address, threads) if executor == "ray" else subprocess_runner(threads)


def subprocess_runner(threads: int | None = None) -> Runner:
    """Local executor: each run is a child process of this one."""
    return lambda spec: run_spec(spec, threads)


def ray_runner(address: str | None = None, threads: int | None = None, cpus_per_run: float = 1.0) -> Runner:
    """Ray executor: each run is a Ray task (``num_cpus=cpus_per_run``) that starts ``kpod run``
    on whichever node Ray picks. On a multi-node cluster every node needs kpod installed and the
    recipes and the output directory on a shared filesystem. ``address=None`` starts a local
    single-node Ray instance; ``"auto"`` joins a running cluster."""
    try:
        import ray
    except ImportError:
        raise RecipeError("--executor ray needs Ray: pip install 'kpod[ray]'") from None
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    remote = ray.remote(num_cpus=cpus_per_run)(run_spec)

    def run(spec: RunSpec) -> tuple[int, str]:
        ref = remote.remote(spec, threads)
        try:
            return ray.get(ref)
        except BaseException:
            ray.cancel(ref, force=True)
            raise

    return run


def execute(
    specs: list[RunSpec],
    runner: Runner,
    jobs: int = 1,
    on_result: Callable[[RunResult], None] | None = None,
) -> list[RunResult]:
    """Run every unfinished spec (``jobs`` at a time); failures are recorded, not raised."""

    def one(spec: RunSpec) -> RunResult:
        if is_finished(spec):
            res = RunResult(spec, "skipped", json.loads((spec.run_dir / "summary.json").read_text()))
        else:
            t0 = time.perf_counter()
            code, tail = runner(spec)
            wall = time.perf_counter() - t0
            summary_path = spec.run_dir / "summary.json"
            if code == 0 and summary_path.exists():
                res = RunResult(spec, "done", json.loads(summary_path.read_text()), wall=wall)
            else:
                res = RunResult(spec, "failed", None, f"exit {code}: {tail}", wall)
        if on_result is not None:
            on_result(res)
        return res

    with ThreadPoolExecutor(max(1, jobs)) as pool:
        return list(pool.map(one, specs))
