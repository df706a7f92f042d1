"""The engine side of the epoch-end hook (docs/schedulers_hook.md): grow the plan of an
adaptive scheduler from its answers, check them, summarise them, and carry the scheduler's
state through checkpoints (written and read by kpod/engine/checkpointing/).

The plan the scheduler's ``plan()`` gave before training (the *offline* plan) is kept apart:
``--resume`` compares only it with the plan recomputed now, then restores the grown plan and
the scheduler's state from the checkpoint, so the run continues with the stages it had.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from kpod.runs import MetricsWriter, RunDirError, write_json
from kpod.schedulers.base import AdaptiveScheduler, CurriculumPlan, EpochStats


def copy_plan(plan: CurriculumPlan) -> CurriculumPlan:
    return CurriculumPlan.from_json(plan.to_json())


def check_plans_match(saved: CurriculumPlan, now: CurriculumPlan, where: Path) -> None:
    if saved.stages != now.stages or saved.ratios != now.ratios:
        raise RunDirError(
            f"{where}: the curriculum plan differs from the one this run computed; "
            "the data, weights or scheduler changed since the checkpoint"
        )


class AdaptiveCurriculum:
    """An adaptive scheduler and the plan it grows (``plan`` is modified in place)."""

    def __init__(self, scheduler: AdaptiveScheduler, plan: CurriculumPlan, n_steps: dict[str, int]) -> None:
        if not plan.stages:
            raise ValueError(
                f"scheduler {scheduler.name!r} is adaptive: its plan() must give at least stage 0 (epoch 1)"
            )
        # a token-level plan grows a prefix ratio with each stage, which the scheduler must give
        first = scheduler.next_prefix_ratio()  # plan()'s last stage's; None: step-level
        self.token_level = first is not None
        if (plan.ratios is not None) != self.token_level:
            raise ValueError(
                f"scheduler {scheduler.name!r} is adaptive: its plan has prefix ratios exactly when its "
                f"next_prefix_ratio() gives one (plan ratios: {'yes' if plan.ratios is not None else 'no'}, "
                f"next_prefix_ratio: {first!r})"
            )
        self.scheduler = scheduler
        self.plan = plan
        self.offline = copy_plan(plan)
        self.n_steps = n_steps

    @property
    def wanted(self) -> frozenset[str]:
        return frozenset(self.scheduler.epoch_stats)

    def given(self, epoch: int) -> dict[str, int]:
        """``c`` of every training sample in ``epoch``."""
        return {sid: self.plan.given_steps(epoch, sid) for sid in sorted(self.n_steps)}

    def next_stage(self, stats: EpochStats) -> dict[str, int]:
        """The scheduler's stage for epoch ``stats.epoch + 1``, checked."""
        stage = self.scheduler.on_epoch_end(stats)
        who = f"scheduler {self.scheduler.name!r}: on_epoch_end after epoch {stats.epoch}"
        if not isinstance(stage, dict):
            raise TypeError(f"{who} returned {type(stage).__name__}, not {{sample_id: c}}")
        missing, unknown = set(self.n_steps) - set(stage), set(stage) - set(self.n_steps)
        if missing or unknown:
            raise ValueError(f"{who}: stage must name every training sample once "
                             f"(missing {sorted(missing)[:5]}, unknown {sorted(unknown)[:5]})")
        bad = [(sid, c) for sid, c in sorted(stage.items())
               if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or not 0 <= c <= self.n_steps[sid]]
        if bad:
            sid, c = bad[0]
            raise ValueError(f"{who}: c = {c!r} for {sid!r} is not an integer in 0..{self.n_steps[sid]} "
                             f"(its step count); {len(bad)} such entries")
        return {sid: int(stage[sid]) for sid in sorted(stage)}

    def next_ratio(self, epoch: int) -> float | None:
        """A token-level scheduler's prefix ratio for epoch ``epoch + 1`` (after its
        ``on_epoch_end``), checked; None for step-level plans."""
        if not self.token_level:
            return None
        ratio = self.scheduler.next_prefix_ratio()
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 <= ratio < 1.0:
            raise ValueError(f"scheduler {self.scheduler.name!r}: next_prefix_ratio after epoch {epoch} is "
                             f"{ratio!r}, not a number in [0, 1)")
        return float(ratio)

    def grow(self, epoch: int, stage: dict[str, int], ratio: float | None = None) -> None:
        """Set ``stage`` (and a token-level plan's ``ratio``) as epoch ``epoch + 1``'s
        (``stages[epoch]``), replacing an offline one."""
        if epoch > len(self.plan.stages):  # the hook runs after every epoch: never more than one short
            raise RuntimeError(f"curriculum: no stage for epoch {epoch} before growing epoch {epoch + 1}'s")
        for seq, item in ((self.plan.stages, stage), (self.plan.ratios, ratio)):
            if seq is None:
                continue
            if epoch < len(seq):
                seq[epoch] = item  # type: ignore[index]
            else:
                seq.append(item)  # type: ignore[arg-type]

    def summary(self, stats: EpochStats, stage: dict[str, int]) -> dict[str, Any]:
        """The ``phase="curriculum"`` metrics event for the new stage."""
        given = np.asarray([stage[s] for s in sorted(stage)], dtype=np.float64)
        before = np.asarray([stats.given[s] for s in sorted(stage)], dtype=np.float64)
        event: dict[str, Any] = {
            "stage": stats.epoch, "for_epoch": stats.epoch + 1, "scheduler": self.scheduler.name,
            "given_mean": round(float(given.mean()), 5) if len(given) else 0.0,
            "full_rationale": int((given == 0).sum()),
            "advanced": int((given < before).sum()), "moved_back": int((given > before).sum()),
        }
        if stats.output_nll:
            event["output_nll_mean"] = round(float(np.mean(list(stats.output_nll.values()))), 5)
        flat = [x for v in stats.step_nll.values() for x in v]
        if flat:
            event["step_nll_mean"] = round(float(np.mean(flat)), 5)
        if stats.validation_score is not None:
            event["validation_score"] = stats.validation_score
        if self.plan.ratios is not None and stats.epoch < len(self.plan.ratios):
            event["prefix_ratio"] = self.plan.ratios[stats.epoch]
        return event

    def advance(self, stats: EpochStats, accelerator: Any, run_dir: Path, metrics: MetricsWriter, step: int) -> None:
        """The next stage from the scheduler (the main process's answer, on every rank), the plan
        grown by it, ``plan.json`` rewritten and a ``phase="curriculum"`` event logged."""
        stage, ratio = ((self.next_stage(stats), self.next_ratio(stats.epoch)) if accelerator.is_main_process
                        else ({}, None))
        if accelerator.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            stage, ratio = broadcast_object_list([stage, ratio], from_process=0)
        self.grow(stats.epoch, stage, ratio)
        if accelerator.is_main_process:
            write_json(run_dir / "plan.json", self.plan.to_json())
            if metrics.listener is not None:  # the trackers' per-stage statistics
                metrics.listener.set_curriculum(self.plan.to_json())
        metrics.write(phase="curriculum", step=step, epoch=stats.epoch, **self.summary(stats, stage))

    # ------------------------------------------------------------------ checkpoints
    def state(self) -> dict[str, Any]:
        return {"offline_plan": self.offline.to_json(), "scheduler": self.scheduler.state_dict()}

    def restore(self, state: dict[str, Any], grown: CurriculumPlan, where: Path) -> None:
        """Check the offline plan against the one computed now; take the grown plan and the
        scheduler's state from the checkpoint."""
        check_plans_match(CurriculumPlan.from_json(state["offline_plan"]), self.offline, where)
        self.plan.stages[:] = grown.stages
        if grown.ratios is not None:  # a token-level plan: its ratios grew with the stages
            self.plan.ratios = list(grown.ratios)
        self.plan.info = grown.info
        self.scheduler.load_state_dict(state["scheduler"])

