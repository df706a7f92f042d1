"""A checkpoint's files: atomic writing of ``checkpoints/step-N/``, safe loading, discovery.

A checkpoint holds ``model.pt`` (the trainable state), ``optimizer.pt``, ``lr_scheduler.pt``,
``rng.pt``, ``plan.json`` (the plan as grown so far), ``curriculum.json`` (adaptive schedulers
only: the offline plan and the scheduler's state) and ``state.json``, written last: a
directory without it is incomplete. Everything is written to ``step-N.tmp`` and renamed.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import signal
from pathlib import Path
from typing import Any

import torch

from kpod.runs import RunDirError, RunWriteError, atomic_write_text, write_error, write_json


def fault_point(point: str, step: int, half_written: Path | None = None) -> None:
    """TEST-ONLY fault injection (tests/e2e/test_reliability_runs.py); a no-op unless the environment
    sets ``KPOD_FAULT=<point>:<step>``. Then this process stops itself (SIGSTOP) at that point so
    the test can ``kill -9`` it there: ``after-step`` (step N's update and metrics are done, its
    checkpoint is not) or ``mid-checkpoint`` (checkpoint N's first file, ``half_written``, is cut
    to half its bytes). Never set it outside tests."""
    if os.environ.get("KPOD_FAULT") != f"{point}:{step}":
        return
    if half_written is not None:
        with open(half_written, "r+b") as f:
            f.truncate(os.path.getsize(half_written) // 2)
    os.kill(os.getpid(), signal.SIGSTOP)


def load_file(path: Path) -> Any:
    """One checkpoint file, tensors and plain containers only (``weights_only``: no code runs)."""
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except (OSError, EOFError, RuntimeError, pickle.UnpicklingError) as e:
        raise RunDirError(
            f"{path}: cannot load this checkpoint file ({type(e).__name__}: {str(e).strip().splitlines()[0][:160]}); "
            f"it is damaged or was not written by kpod: remove {path.parent} to resume from the checkpoint "
            "before it, or start again with --overwrite"
        ) from None


class _Recorded:
    """A file torch.save writes through, keeping the OSError of a failed write: torch's zip writer
    swallows it and fails later with ``RuntimeError: [enforce fail …] unexpected pos``. Short
    writes are completed here."""

    def __init__(self, f: Any) -> None:
        self.f = f
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        view, done = memoryview(data).cast("B"), 0
        try:
            while done < len(view):
                n = self.f.write(view[done:])
                if not n:  # nothing taken and no error: a full disk by another name
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                done += n
        except OSError as e:
            self.error = self.error or e
            raise
        return done

    def flush(self) -> None:
        self.f.flush()

    @property
    def name(self) -> str:
        return self.f.name


def save_file(obj: Any, path: Path) -> None:
    """torch.save to ``path``, fsynced; a failed write (a full disk) raises its OSError."""
    with open(path, "wb") as f:
        out = _Recorded(f)
        try:
            torch.save(obj, out)
        except RuntimeError:
            if out.error is not None:
                raise out.error from None
            raise
        f.flush()
        os.fsync(f.fileno())


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step-{step:07d}"


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """The complete checkpoints of a run (``state.json`` written), oldest first."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    done = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-") and (p / "state.json").exists()]
    return sorted(done, key=lambda p: int(p.name.split("-")[1]))


def last_checkpoint(run_dir: Path) -> Path | None:
    dirs = checkpoint_dirs(run_dir)
    return dirs[-1] if dirs else None


def checkpoint_step(path: Path | None) -> int:
    """``step-0000012`` → 12; no checkpoint → 0."""
    return int(path.name.split("-")[1]) if path is not None else 0


def write_checkpoint(
    run_dir: Path,
    step: int,
    tensors: dict[str, Any],
    documents: dict[str, Any],
    state: dict[str, Any],
    keep: int,
) -> Path:
    """Write ``step-N/``: ``tensors`` (file name → object for torch.save, written in order; the
    first is the one the ``mid-checkpoint`` fault cuts), ``documents`` (file name → JSON), then
    ``state.json``; keep the newest ``keep`` checkpoints. Main process only.

    The same step again (training ended right after a periodic checkpoint): weights, optimizer
    and RNG are those saved, so only ``state.json`` is replaced, atomically."""
    final = checkpoint_path(run_dir, step)
    if (final / "state.json").exists():
        atomic_write_text(final / "state.json", json.dumps(state))
        return final
    tmp = final.with_name(final.name + ".tmp")
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        for i, (name, obj) in enumerate(tensors.items()):
            save_file(obj, tmp / name)
            if i == 0:
                fault_point("mid-checkpoint", step, half_written=tmp / name)
        for name, doc in documents.items():
            write_json(tmp / name, doc)
        atomic_write_text(tmp / "state.json", json.dumps(state))  # written last: marks it complete
        tmp.rename(final)
    except (OSError, RunWriteError) as e:
        shutil.rmtree(tmp, ignore_errors=True)  # best effort; a leftover step-N.tmp is removed on resume
        cause = write_error(tmp, e) if isinstance(e, OSError) else e
        raise RunWriteError(f"checkpoint {final.name} not written: {cause}", cause.errno) from None
    for old in checkpoint_dirs(run_dir)[:-keep]:
        shutil.rmtree(old)
    return final


def read_json(path: Path) -> Any:
    """A checkpoint's JSON file; a missing one names the checkpoint."""
    if not path.exists():
        raise RunDirError(f"{path}: missing from the checkpoint (written by another kpod version or scheduler?)")
    return json.loads(path.read_text())
