"""Resume cleanup: a run directory left by a crash or ``kill -9`` made consistent with its last
complete checkpoint before training resumes (the main process, before anything is loaded)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from kpod.engine.checkpointing.files import checkpoint_step, last_checkpoint
from kpod.runs import MetricsWriter, RunDirError, atomic_write_text, writing


def prepare_resume(run_dir: Path) -> dict[str, Any]:
    """Make a run directory left by a crash or ``kill -9`` consistent before training resumes.

    Removes what an interrupted write leaves: temporary files and directories (``*.tmp``, in
    the run directory and ``checkpoints/``, e.g. a half-written ``step-N.tmp``). Trims
    ``metrics.jsonl`` to the last complete checkpoint: a torn last line, ``train`` events after
    the checkpoint's step (they are computed again), final ``eval`` events (evaluation runs
    again) and model-selection evaluations the checkpoint does not record as done (after its
    ``evaluated_step``) go; everything else stays. Appends a ``resume`` event and returns it.
    """
    removed = _remove_partial_writes(run_dir)
    ckpt = last_checkpoint(run_dir)
    step = checkpoint_step(ckpt)
    path = run_dir / "metrics.jsonl"
    # a selection evaluation logged after the checkpoint was written (an epoch end's, which runs
    # after the last step's checkpoint) is run again on resume: only those the checkpoint records
    # as done stay, so none is listed twice
    dropped = _trim_metrics(path, step, _evaluated_step(ckpt)) if path.exists() else 0
    event = {"phase": "resume", "step": step, "checkpoint": ckpt.name if ckpt else None,
             "removed": removed, "metrics_dropped": dropped}
    MetricsWriter(path).write(**event)
    return event


def _remove_partial_writes(run_dir: Path) -> list[str]:
    """Remove ``*.tmp`` files and directories in the run directory and ``checkpoints/``; their
    paths relative to the run directory."""
    removed: list[str] = []
    for parent in (run_dir, run_dir / "checkpoints"):
        if not parent.is_dir():
            continue
        for p in sorted(parent.iterdir()):
            if p.name.endswith(".tmp"):
                with writing(p):
                    if p.is_dir():
                        shutil.rmtree(p)
                    else:
                        p.unlink()
                removed.append(str(p.relative_to(run_dir)))
    return removed


def _trim_metrics(path: Path, step: int, evaluated: int) -> int:
    """Rewrite ``metrics.jsonl`` without the events a resume from ``step`` computes again (see
    :func:`prepare_resume`); how many lines went."""
    keep: list[str] = []
    dropped = 0
    lines = path.read_text(encoding="utf-8").split("\n")
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            ev = json.loads(line)
        except json.JSONDecodeError:
            if n == len(lines):  # the line a kill cut short (no newline after it)
                dropped += 1
                continue
            raise RunDirError(f"{path}:{n}: not a JSON line; the metrics log is damaged") from None
        in_training = ev.get("phase") == "eval" and ev.get("during_training")
        if (ev.get("phase") == "eval" and not in_training) or (
            ev.get("phase") == "train" and ev.get("step", 0) > step
        ) or (in_training and ev.get("step", 0) > evaluated):
            dropped += 1
            continue
        keep.append(line + "\n")
    atomic_write_text(path, "".join(keep))
    return dropped


def _evaluated_step(ckpt: Path | None) -> int:
    """The last step whose selection evaluation the checkpoint ``ckpt`` includes (0: none)."""
    if ckpt is None:
        return 0
    try:
        state = json.loads((ckpt / "state.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise RunDirError(f"{ckpt / 'state.json'}: cannot read the checkpoint's state ({e}); remove {ckpt} "
                          "to resume from the checkpoint before it") from None
    return min(int(state.get("evaluated_step") or 0), checkpoint_step(ckpt))
