"""Model selection's files (``eval.select_on``): ``selected/step-N/`` holds the best model so far.

The Trainer decides when to evaluate (kpod/engine/train.py), the Checkpointer which score wins
(``checkpointer.py``); this module writes a candidate atomically, prunes the others, reads the
chosen one back and lists every selection evaluation a run logged.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from kpod.engine.checkpointing.files import load_file, save_file
from kpod.engine.checkpointing.fsdp import load_full_model_state
from kpod.runs import RunDirError, RunWriteError, write_error, write_json


def selected_dir(run_dir: Path, step: int) -> Path:
    return run_dir / "selected" / f"step-{step:07d}"


def write_selected(run_dir: Path, step: int, score: float, state: dict[str, Any]) -> None:
    """The trainable state of step ``step`` with its score, written to ``.tmp`` then renamed."""
    final = selected_dir(run_dir, step)
    tmp = final.with_name(final.name + ".tmp")
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        save_file(state, tmp / "model.pt")
        write_json(tmp / "selection.json", {"step": step, "score": score})
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    except (OSError, RunWriteError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        cause = write_error(tmp, e) if isinstance(e, OSError) else e
        raise RunWriteError(f"selected model {final.name} not written: {cause}", cause.errno) from None


def prune_selected(run_dir: Path, best_step: int | None) -> None:
    """Keep only the selected model of ``best_step`` (older bests, and candidates from steps a
    resumed run will train again, go)."""
    root = run_dir / "selected"
    if not root.exists():
        return
    keep = selected_dir(run_dir, best_step).name if best_step is not None else None
    for d in root.iterdir():
        if d.name != keep:
            shutil.rmtree(d)


def load_selected(run_dir: Path, step: int, acc: Any, model: Any, fsdp: bool) -> None:
    """Load the trainable state selected at ``step`` into ``model`` (every rank calls it)."""
    path = selected_dir(run_dir, step) / "model.pt"
    if not path.exists():
        raise RunDirError(f"{path}: the selected model (step {step}) is missing")
    saved = load_file(path)
    if fsdp:
        load_full_model_state(model, saved)
    else:
        acc.unwrap_model(model).load_state_dict(saved, strict=False)


def selection_history(path: Path, split: str) -> list[dict[str, Any]]:
    """Every selection evaluation in ``metrics.jsonl`` (a resumed run logged some before)."""
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [{"step": r["step"], "accuracy": r["accuracy"]} for r in rows
            if r.get("phase") == "eval" and r.get("during_training") and r.get("split") == split]
