"""Checkpoint files: atomic writing of ``checkpoints/step-N/``, safe loading, RNG states.

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
import random
import shutil
import signal
from pathlib import Path
from typing import Any

import torch

from kpod.engine.fsdp_state import (
    full_optimizer_state,
    is_full_optimizer_state,
    load_full_model_state,
    load_full_optimizer_state,
)
from kpod.runs import (
    RunDirError,
    RunWriteError,
    atomic_write_text,
    checkpoint_dirs,
    write_error,
    write_json,
)


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


def frozen_names(model: Any) -> set[str]:
    return {n for n, p in model.named_parameters(remove_duplicate=False) if not p.requires_grad}


def trainable_state(model: Any, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The part of a state dict that training changes: everything, or (LoRA, frozen layers) the
    trainable parameters and buffers. The frozen rest is rebuilt from the base on resume."""
    frozen = frozen_names(model)
    return {k: v for k, v in state.items() if k not in frozen} if frozen else state


def rng_state() -> dict[str, Any]:
    rng: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def restore_rng(rng: dict[str, Any]) -> None:
    torch.set_rng_state(rng["torch"])
    random.setstate(rng["python"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step-{step:07d}"


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


# ---------------------------------------------------------------------- the training state
def training_tensors(acc: Any, model: Any, optimizer: Any, lr_scheduler: Any, fsdp: bool) -> dict[str, Any]:
    """The tensor files of a checkpoint, in writing order. Every rank calls it (under FSDP the
    model and optimizer states are gathered from every rank's shard, a collective)."""
    model_state = trainable_state(acc.unwrap_model(model), acc.get_state_dict(model))
    optim_state = full_optimizer_state(model, optimizer.optimizer) if fsdp else optimizer.state_dict()
    return {"model.pt": model_state, "optimizer.pt": optim_state,
            "lr_scheduler.pt": lr_scheduler.state_dict(), "rng.pt": rng_state()}


def load_training_tensors(path: Path, acc: Any, model: Any, optimizer: Any, lr_scheduler: Any, fsdp: bool) -> None:
    """Model (its trainable part), optimizer, LR schedule and RNG states from ``path``."""
    bare = acc.unwrap_model(model)
    saved = load_file(path / "model.pt")
    optim = load_file(path / "optimizer.pt")
    if is_full_optimizer_state(optim) != fsdp:
        written, now = ("without", "with") if fsdp else ("with", "without")
        raise RunDirError(
            f"{path}/optimizer.pt was written {written} FSDP and this run is {now} it: resume with "
            "the launch preset the run started with"
        )
    if fsdp:  # every rank reads the full state and keeps its shard
        missing, unexpected = load_full_model_state(model, saved)
    else:
        missing, unexpected = bare.load_state_dict(saved, strict=False)
    frozen = frozen_names(bare)
    if unexpected or set(missing) - frozen:
        raise RunDirError(
            f"{path}/model.pt does not match the student: missing {sorted(set(missing) - frozen)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}"
        )
    if fsdp:
        load_full_optimizer_state(model, optimizer.optimizer, optim)
    else:
        optimizer.load_state_dict(optim)
    lr_scheduler.load_state_dict(load_file(path / "lr_scheduler.pt"))
    restore_rng(load_file(path / "rng.pt"))
