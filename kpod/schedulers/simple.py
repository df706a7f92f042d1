"""Baseline in-rationale schedules: ``linear`` and ``anti_curriculum``.

``linear`` (difficulty-blind): every question gives up its input steps at the same relative
pace, ``c_i(t) = round((n_i - 1)(1 - t/T))`` for stages ``t = 0..T-1`` (half rounds up), so
``c_i(0) = n_i - 1`` (only the last step is output, as in KPOD's start) and ``c_i`` reaches 0
at stage ``T``, i.e. from epoch ``T + 1`` on every question trains on its full rationale. It
keeps KPOD's start and horizon but drops the difficulty budget and the diversity selection.

``anti_curriculum`` (hard to easy): the KPOD plan played backwards, ``stages[t] =
kpod_stages[T-1-t]`` for the same data and params. Epoch 1 trains on the state KPOD reaches
last (the most complete rationales it schedules, i.e. the hardest outputs) and the output
shrinks stage by stage to KPOD's first, easiest state (mostly the last step only); after epoch
``T``, as in every scheduler, all questions train on their full rationales.

Why this is the right control for the *order*: per stage it uses exactly the same
(question, ``c``) training states as ``kpod_knapsack``, only in the opposite order, so the
multiset of targets, the total number of target steps and tokens, and everything after epoch
``T`` are identical. A difference between the two runs isolates the effect of going from easy
to hard, which ``linear`` (different states) and ``none`` (no partial targets) cannot.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from kpod.registry import SCHEDULERS
from kpod.schedulers.base import CurriculumPlan, ScheduleInputs, SchedulerBase
from kpod.schedulers.kpod_knapsack import KpodKnapsackParams, default_T, plan_from_inputs

__all__ = ["LinearSchedule", "AntiCurriculum", "linear_given_steps"]


def linear_given_steps(n_steps: int, t: int, T: int) -> int:
    """``round((n - 1)(1 - t/T))`` with halves rounded up, in exact integer arithmetic."""
    if T < 1:
        raise ValueError(f"T must be >= 1, got {T}")
    m = max(n_steps - 1, 0)
    t = min(max(t, 0), T)
    return (2 * m * (T - t) + T) // (2 * T)


@SCHEDULERS("linear")
class LinearSchedule(SchedulerBase):
    """Difficulty-blind linear schedule: every question moves at the same relative pace."""

    name: ClassVar[str] = "linear"

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")

        T: int | None = Field(
            None,
            ge=1,
            description="stage at which every question reaches c = 0; null: max(1, epochs // 2)",
        )

    params: Params

    def plan(self, inputs: ScheduleInputs) -> CurriculumPlan:
        T = self.params.T if self.params.T is not None else default_T(inputs.num_epochs)
        ids = sorted(inputs.n_steps)
        stages = [
            {sid: linear_given_steps(inputs.n_steps[sid], t, T) for sid in ids} for t in range(T)
        ]
        return CurriculumPlan(stages=stages, info={"scheduler": self.name, "T": T})


@SCHEDULERS("anti_curriculum")
class AntiCurriculum(SchedulerBase):
    """KPOD's plan in reverse stage order (hard to easy); same states, opposite order."""

    name: ClassVar[str] = "anti_curriculum"
    needs: ClassVar[frozenset[str]] = frozenset({"difficulty", "clusters"})

    class Params(KpodKnapsackParams):
        """Same parameters as ``kpod_knapsack``; they define the plan that is reversed."""

    params: KpodKnapsackParams

    def plan(self, inputs: ScheduleInputs) -> CurriculumPlan:
        ids, stages, kpod_info = plan_from_inputs(self.params, inputs, self.name)
        info: dict[str, Any] = {
            "scheduler": self.name,
            "order": "reversed kpod_knapsack stages: epoch e uses kpod stage index T - e",
            "kpod": kpod_info,
        }
        return CurriculumPlan(stages=[dict(zip(ids, s)) for s in reversed(stages)], info=info)
