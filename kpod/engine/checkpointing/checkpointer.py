"""The Trainer's one door to its checkpoints: the loop's position (``TrainState``), the training
tensors, the curriculum state, and model selection's best step.

Saving writes ``checkpoints/step-N/`` (``files.py``) with the tensors (``tensors.py``, FSDP
included), ``plan.json``, an adaptive run's ``curriculum.json`` and ``state.json``; loading reads
them back, refuses a changed offline plan and restores a grown one. Model selection's candidates
go to ``selected/step-N/`` (``selection.py``): the best score wins, ties keep the earlier step.
Every method is called on every rank (gathering and sharding under FSDP are collectives); only
the main process writes.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kpod.engine.checkpointing.files import (
    checkpoint_path,
    last_checkpoint,
    read_json,
    write_checkpoint,
)
from kpod.engine.checkpointing.selection import load_selected, prune_selected, write_selected
from kpod.engine.checkpointing.tensors import (
    load_training_tensors,
    trainable_state,
    training_tensors,
)
from kpod.engine.curriculum import AdaptiveCurriculum, check_plans_match
from kpod.engine.distributed import is_fsdp
from kpod.runs import write_json
from kpod.schedulers.base import CurriculumPlan

CURRICULUM_FILE = "curriculum.json"  # in each checkpoint of an adaptive run


@dataclass
class TrainState:
    """Where training stands; a checkpoint's ``state.json``."""

    epoch: int = 1  # 1-based epoch being trained
    micro: int = 0  # index of the next micro-batch within the epoch (this rank's list)
    global_step: int = 0
    finished: bool = False
    # model selection on validation (eval.select_on): the best evaluation so far and the last
    # step evaluated; saved in every checkpoint so that a resumed run keeps its choice
    best_step: int | None = None
    best_score: float | None = None
    evaluated_step: int = 0
    evaluated_score: float | None = None  # the score of that evaluation (EpochStats.validation_score)
    # adaptive schedulers: the last epoch whose end the hook has seen (a resumed run that stops
    # at an epoch boundary must not ask the scheduler twice)
    curriculum_epoch: int = 0


@dataclass
class TrainingParts:
    """What a checkpoint holds beside the loop's position, as the Trainer holds it."""

    model: Any  # as the accelerator prepared it (DDP / FSDP wrapper, compiled)
    optimizer: Any  # the accelerator's optimizer wrapper
    lr_scheduler: Any
    plan: CurriculumPlan  # the plan as grown so far
    curriculum: AdaptiveCurriculum | None  # an adaptive scheduler's state


class Checkpointer:
    """Checkpoints and selected models of one run directory."""

    def __init__(self, run_dir: Path, accelerator: Any, keep: int) -> None:
        self.run_dir = run_dir
        self.acc = accelerator
        self.keep = keep  # train.keep_checkpoints
        self.fsdp = is_fsdp(accelerator)

    def last(self) -> Path | None:
        """The newest complete checkpoint (None: none yet)."""
        return last_checkpoint(self.run_dir)

    def save(self, state: TrainState, parts: TrainingParts) -> Path:
        """Write ``checkpoints/step-N/`` atomically and keep the newest ``keep``."""
        self.acc.wait_for_everyone()
        tensors = training_tensors(self.acc, parts.model, parts.optimizer, parts.lr_scheduler, self.fsdp)
        if not self.acc.is_main_process:
            return checkpoint_path(self.run_dir, state.global_step)
        documents: dict[str, Any] = {"plan.json": parts.plan.to_json()}
        if parts.curriculum is not None:
            documents[CURRICULUM_FILE] = parts.curriculum.state()
        final = write_checkpoint(self.run_dir, state.global_step, tensors, documents, asdict(state), self.keep)
        prune_selected(self.run_dir, state.best_step)
        return final

    def load(self, path: Path, parts: TrainingParts) -> TrainState:
        """``--resume`` from checkpoint ``path``: the tensors into ``parts``, the plan checked (and
        an adaptive run's grown plan and scheduler state restored); returns the loop's position."""
        load_training_tensors(path, self.acc, parts.model, parts.optimizer, parts.lr_scheduler, self.fsdp)
        self._restore_plan(path, parts.plan, parts.curriculum)
        state = TrainState(**json.loads((path / "state.json").read_text()))
        if self.acc.is_main_process:  # candidates from steps the resumed run trains again go
            prune_selected(self.run_dir, state.best_step)
        self.acc.wait_for_everyone()
        return state

    def _restore_plan(self, path: Path, plan: CurriculumPlan, curriculum: AdaptiveCurriculum | None) -> None:
        """Refuse a changed offline plan; an adaptive run continues with the plan it had grown
        and its scheduler's state (and the run's plan.json is rewritten with that plan)."""
        saved = CurriculumPlan.from_json(read_json(path / "plan.json"))
        if curriculum is None:
            check_plans_match(saved, plan, path)
            return
        curriculum.restore(read_json(path / CURRICULUM_FILE), saved, path)
        if self.acc.is_main_process:
            write_json(self.run_dir / "plan.json", plan.to_json())

    # ------------------------------------------------------------------ model selection
    def offer(self, state: TrainState, score: float, model: Any) -> None:
        """Record the selection evaluation of ``state.global_step``; keep the model's trainable
        state in ``selected/step-N/`` if ``score`` beats the best so far (ties keep the earlier step)."""
        step = state.global_step
        state.evaluated_step, state.evaluated_score = step, score
        if state.best_score is not None and score <= state.best_score:
            return
        trainable = trainable_state(self.acc.unwrap_model(model), self.acc.get_state_dict(model))
        if self.acc.is_main_process:
            write_selected(self.run_dir, step, score, trainable)
        self.acc.wait_for_everyone()
        state.best_step, state.best_score = step, score

    def load_selected(self, state: TrainState, model: Any) -> int | None:
        """The selected step's trainable state into ``model``; returns that step (None: none)."""
        if state.best_step is not None:
            load_selected(self.run_dir, state.best_step, self.acc, model, self.fsdp)
        return state.best_step
