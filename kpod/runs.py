"""The run directory's files: layout, atomic writes (and the error a failed write raises), the
metrics writer, summary.json. Checkpoints and selected models: kpod/engine/checkpointing/.

::

    RUN_DIR/
      recipe.resolved.yaml   the validated recipe with every default
      metrics.jsonl          one JSON object per logged event
      predictions.jsonl      one row per evaluated sample (sample_id, prompt, output, …)
      summary.json           accuracy per split, wall times, peak memory, seed, version
      plan.json              the curriculum plan (c per sample_id per stage; given_all: records given every step)
      weights_sample.jsonl   tokens and weights of a few training rationales (kpod report)
      tracking/              tracker files (recipe section ``track``)
      model/                 the trained (or selected) model
      checkpoints/step-NNNNNNN/, selected/step-NNNNNNN/   (kpod/engine/checkpointing/)
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from kpod.timing import PhaseTimer, peak_memory

if TYPE_CHECKING:
    from kpod.recipe_types import Recipe


LOCK_NAME = ".kpod-run.lock"  # the run lock (kpod/engine/run_lock.py): not part of a run's contents


class RunDirError(RuntimeError):
    """The run directory cannot be used as asked (exists, unwritable, …)."""


class RunWriteError(RuntimeError):
    """A write failed mid-run (disk full, quota, I/O error); the message names the file."""

    def __init__(self, message: str, errno_: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno_


def free_space(path: Path) -> str:
    """Free space on the filesystem holding ``path`` (its nearest existing ancestor), e.g. "1.5 MiB"."""
    probe = Path(os.path.abspath(path))
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        return "unknown"
    return f"{free / 2**20:.1f} MiB"


def write_error(path: Path, e: OSError) -> RunWriteError:
    """The one error for a failed write: the path, the cause, and on a full disk the free space."""
    code = errno.errorcode.get(e.errno or 0, "")
    full = (f" (the disk is full: {free_space(path)} free there)" if e.errno in (errno.ENOSPC, errno.EDQUOT) else "")
    return RunWriteError(f"cannot write {path}: {e.strerror or e}{f' [{code}]' if code else ''}{full}", e.errno)


_OS_ERROR = re.compile(r"\(os error (\d+)\)")


def os_error_of(e: BaseException) -> OSError | None:
    """The OSError behind a failed write: ``e`` itself, or the one a library reports only in its
    message (safetensors' writer: ``I/O error: No space left on device (os error 28)``)."""
    if isinstance(e, OSError):
        return e
    m = _OS_ERROR.search(str(e))
    if m is None:
        return None
    code = int(m.group(1))
    return OSError(code, os.strerror(code))


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """Re-raise a write failure from the block (an OSError, or a library's error wrapping one) as
    a :class:`RunWriteError` naming ``path``; any other error passes through unchanged."""
    try:
        yield
    except RunWriteError:
        raise
    except Exception as e:
        cause = os_error_of(e)
        if cause is None:
            raise
        raise write_error(path, cause) from None


def prepare_run_dir(path: Path, *, resume: bool, overwrite: bool) -> Path:
    if path.exists() and not path.is_dir():
        raise RunDirError(f"{path} exists and is not a directory; choose another --out")
    try:
        holds_run = path.exists() and any(p.name != LOCK_NAME for p in path.iterdir())
    except OSError as e:
        raise RunDirError(f"cannot read run directory {path}: {e.strerror}") from None
    if holds_run and not (resume or overwrite):
        raise RunDirError(
            f"{path} already holds a run; pass --resume to continue it or --overwrite to replace it"
        )
    if overwrite and path.exists() and not resume:  # everything but the lock this process holds
        for p in path.iterdir():
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            elif p.name != LOCK_NAME:
                p.unlink()
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
    """Write to a unique temporary file, fsync, then rename over ``path`` (atomic on POSIX).

    A failed write (e.g. a full disk) removes the temporary file, leaves ``path`` as it was and
    raises :class:`RunWriteError`.
    """
    tmp = unique_tmp(path)
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise write_error(path, e) from None


def atomic_save_dir(path: Path, save: Callable[[str], None]) -> None:
    """``save(tmp)`` fills a fresh temporary directory, which then replaces ``path`` by rename."""
    tmp = unique_tmp(path)
    with writing(path):
        try:
            save(str(tmp))
            if path.exists():
                shutil.rmtree(path)
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def append_or_cut(fd: int, data: bytes, sync: bool = False) -> None:
    """Append ``data`` at the end of the open file ``fd`` whole or not at all (fsync'd when
    ``sync``): a failed or short write (a full disk) is cut off again, so no torn line stays
    behind; the OSError is raised."""
    start = os.lseek(fd, 0, os.SEEK_END)
    view, done = memoryview(data), 0
    try:
        while done < len(view):
            done += os.write(fd, view[done:])
        if sync:
            os.fsync(fd)
    except OSError:
        with contextlib.suppress(OSError):  # best effort (a device such as /dev/full has no size)
            os.ftruncate(fd, start)
        raise


def append_whole(path: Path, data: bytes) -> None:
    """:func:`append_or_cut` on ``path`` (created if missing)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        append_or_cut(fd, data)
    finally:
        os.close(fd)


class MetricsWriter:
    """Appends one JSON object per line to ``metrics.jsonl`` (flushed per write)."""

    def __init__(self, path: Path, enabled: bool = True, listener: Any = None) -> None:
        self.path = path
        self.enabled = enabled
        # an object with ``on_event(event)`` (kpod.tracking.RunTracker) that gets a copy of each
        # event after it is on disk: the file stays the source of truth
        self.listener = listener

    def write(self, **event: Any) -> None:
        """Non-finite floats are written as null (strict JSON)."""
        if not self.enabled:
            return
        event = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in event.items()}
        event.setdefault("time", round(time.time(), 3))
        with writing(self.path):
            append_whole(self.path, (json.dumps(event) + "\n").encode("utf-8"))
        if self.listener is not None:
            self.listener.on_event(event)


def last_train_metrics(path: Path) -> dict[str, Any]:
    """The loss components of the last ``phase: train`` event in ``metrics.jsonl``."""
    if not path.exists():
        return {}
    last: dict[str, Any] = {}
    for line in path.read_text().splitlines():
        ev = json.loads(line)
        if ev.get("phase") == "train":
            last = ev
    return {k: last[k] for k in ("loss", "ce_rationale", "ce_answer") if k in last}


def run_summary(
    recipe: Recipe, run_dir: Path, *, student: dict[str, Any], precision: str, results: dict[str, Any],
    missing_splits: list[str], data: dict[str, int], data_report: dict[str, Any], selection: dict[str, Any] | None,
    steps: int, packing: str, loss_chunk: str, weighting: dict[str, Any], scheduler: dict[str, Any],
    timer: PhaseTimer,
) -> dict[str, Any]:
    """summary.json: what ran (recipe, seed, student, versions), accuracy per split, the phases'
    reports, wall times and peak memory; the last logged loss components from metrics.jsonl."""
    import kpod

    return {
        "kpod_version": kpod.__version__,
        "recipe": recipe.name,
        "seed": recipe.seed,
        "student": student,
        "precision": precision,
        "splits": results,
        "missing_splits": missing_splits,
        "data": data,
        "data_report": data_report,
        "selection": selection,
        "train": {
            "steps": steps,
            "epochs": recipe.train.epochs,
            "final": last_train_metrics(run_dir / "metrics.jsonl"),
            "packing": packing,
            "loss_chunk": loss_chunk,
        },
        "weighting": {"name": recipe.weighting.name, **weighting},
        "scheduler": {"name": recipe.scheduler.name, **scheduler},
        "loss": recipe.loss.name,
        "wall_seconds": {"total": timer.total(), "phases": timer.phases},
        "memory": peak_memory(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "finished": True,
    }
