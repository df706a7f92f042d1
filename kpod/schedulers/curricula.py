"""The paper's Table 2 curricula as schedulers: ``spl``, ``acl`` (alias ``adaptive_cl``), ``icl``.

They replace KPOD's schedule only (token weighting stays, recipes/ablations/{spl,acl,icl}.yaml).
The math is in :mod:`kpod.schedulers.curricula_math`; equations, defaults and every decision in
docs/baselines.md §1–3.

* ``spl`` and ``acl`` are adaptive (docs/schedulers_hook.md): stage 0 gives every question all
  but its last step (as ``kpod_knapsack`` starts); after each epoch the student's
  losses decide which questions give up ``delta_s`` steps. From stage ``T`` on (KPOD's
  ``T = N_e/2`` unless set) every question trains on its full rationale, as under KPOD.
* ``icl`` is token level: ``c = 0`` in every stage and a per-stage prefix ratio ``p_t``
  (``plan.ratios``): the first ``⌊n·p_t⌋`` target tokens are given. ``pace: fixed`` (default) is
  offline; ``pace: validation`` (the paper's) is adaptive and lowers ``p`` from the epoch end's
  model-selection score (``EpochStats.validation_score``, :class:`IclValidationPace`).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from kpod.registry import SCHEDULERS
from kpod.schedulers.base import CurriculumPlan, EpochStats, ScheduleInputs, SchedulerBase
from kpod.schedulers.curricula_math import (
    IclValidationPace,
    acl_advance,
    acl_growth_for_stages,
    acl_pace,
    acl_update_difficulty,
    icl_prefix_ratio,
    spl_advance,
    spl_initial_lambda,
    spl_lambda,
)
from kpod.schedulers.kpod_knapsack import default_T

__all__ = ["AdaptiveCL", "InSampleCL", "InSampleCLValidation", "SelfPaced", "last_step_stage"]

_T_FIELD = Field(None, ge=1, description="stage from which every question trains on its full rationale; "
                 "null: max(1, epochs // 2), KPOD's T")


def last_step_stage(n_steps: dict[str, int]) -> dict[str, int]:
    """Stage 0 of the adaptive curricula: only the last step (and the answer) is output."""
    return {sid: max(n - 1, 0) for sid, n in sorted(n_steps.items())}


def _full(given: dict[str, int]) -> dict[str, int]:
    return {sid: 0 for sid in given}


@SCHEDULERS("spl")
class SelfPaced(SchedulerBase):
    """Self-paced learning (Kumar et al., NeurIPS 2010): after epoch ``t`` a question whose output
    NLL is under ``λ_t = λ_1 μ^(t-1)`` gives up ``delta_s`` steps; ``λ_1`` is the ``init_quantile``
    of epoch 1's losses of the questions that can still move."""

    name: ClassVar[str] = "spl"
    epoch_stats: ClassVar[frozenset[str]] = frozenset({"output_nll"})

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")

        mu: float = Field(1.3, ge=1.0, description="threshold growth per stage (the paper's K ← K/μ)")
        init_quantile: float = Field(0.5, gt=0.0, le=1.0, description="λ_1 = this quantile of epoch 1's losses")
        delta_s: int = Field(1, ge=1, description="steps a selected question gives up per stage")
        T: int | None = _T_FIELD

    params: Params

    def __init__(self, params: Params | None = None) -> None:
        super().__init__(params)
        self.T = 1
        # state: λ_1 and the epoch it was set after (the first with a question that can move)
        self.lambda0: float | None = None
        self.first_epoch = 0

    def plan(self, inputs: ScheduleInputs) -> CurriculumPlan:
        self.T = self.params.T if self.params.T is not None else default_T(inputs.num_epochs)
        info = {"scheduler": self.name, "T": self.T, "mu": self.params.mu, "adaptive": True}
        return CurriculumPlan(stages=[last_step_stage(inputs.n_steps)], info=info)

    def on_epoch_end(self, stats: EpochStats) -> dict[str, int]:
        if stats.epoch >= self.T:
            return _full(stats.given)
        missing = [sid for sid, c in stats.given.items() if c > 0 and sid not in stats.output_nll]
        if missing:
            raise KeyError(f"spl after epoch {stats.epoch}: no measured loss for {len(missing)} "
                           f"sample_ids, e.g. {missing[:3]}")
        movable = {sid: stats.output_nll[sid] for sid, c in stats.given.items() if c > 0}
        if not movable:
            return dict(stats.given)
        if self.lambda0 is None:
            self.lambda0 = spl_initial_lambda(movable, self.params.init_quantile)
            self.first_epoch = stats.epoch
        return spl_advance(stats.given, stats.output_nll, self.threshold(stats.epoch), self.params.delta_s)

    def threshold(self, epoch: int) -> float:
        """``λ`` applied after ``epoch``: ``λ_1 μ^(epoch - first)``."""
        if self.lambda0 is None:
            raise RuntimeError("spl: the threshold is set after the first epoch with a question to move")
        return spl_lambda(epoch - self.first_epoch, self.lambda0, self.params.mu)

    def state_dict(self) -> dict[str, Any]:
        return {"lambda0": self.lambda0, "first_epoch": self.first_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.lambda0 = None if state["lambda0"] is None else float(state["lambda0"])
        self.first_epoch = int(state["first_epoch"])


@SCHEDULERS("acl")
class AdaptiveCL(SchedulerBase):
    """Adaptive curriculum learning (Kong et al., ICCV 2021) on steps: difficulty starts at Eq. 8
    and is re-measured each epoch, ``d ← (1-α)d + α·step_nll``; the pace ``g(t)`` is the share of
    all rationale steps on the output side; the easiest next steps move until it is reached."""

    name: ClassVar[str] = "acl"
    needs: ClassVar[frozenset[str]] = frozenset({"difficulty"})
    epoch_stats: ClassVar[frozenset[str]] = frozenset({"step_nll"})

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")

        alpha: float = Field(0.7, ge=0.0, le=1.0, description="weight of the re-measured loss in d")
        start: float | None = Field(None, gt=0.0, le=1.0,
                                    description="g_0; null: max(0.1, the output share of stage 0)")
        growth: float | None = Field(None, ge=1.0, description="pace growth q; null: g reaches 1 at stage T")
        every: int = Field(1, ge=1, description="stages per growth step r")
        delta_s: int = Field(1, ge=1, description="steps a selected question gives up per stage")
        T: int | None = _T_FIELD

    params: Params

    def __init__(self, params: Params | None = None) -> None:
        super().__init__(params)
        self.T, self.start, self.growth = 1, 1.0, 1.0
        self.difficulty: dict[str, list[float]] = {}  # state: the re-measured step difficulty

    def plan(self, inputs: ScheduleInputs) -> CurriculumPlan:
        if inputs.difficulties is None:
            raise ValueError("scheduler 'acl' needs step difficulties (the engine computes them for needs)")
        stage = last_step_stage(inputs.n_steps)
        total = sum(inputs.n_steps.values())
        share = sum(inputs.n_steps[s] - c for s, c in stage.items()) / total if total else 1.0
        self.T = self.params.T if self.params.T is not None else default_T(inputs.num_epochs)
        self.start = self.params.start if self.params.start is not None else max(0.1, share)
        self.growth = (self.params.growth if self.params.growth is not None
                       else acl_growth_for_stages(self.start, self.T))
        self.difficulty = {sid: [float(x) for x in inputs.difficulties[sid]] for sid in sorted(inputs.n_steps)}
        info = {"scheduler": self.name, "T": self.T, "start": self.start, "growth": self.growth, "adaptive": True}
        return CurriculumPlan(stages=[stage], info=info)

    def pace(self, stage: int) -> float:
        return acl_pace(stage, self.start, self.growth, self.params.every)

    def on_epoch_end(self, stats: EpochStats) -> dict[str, int]:
        self.difficulty = acl_update_difficulty(self.difficulty, stats.step_nll, self.params.alpha)
        if stats.epoch >= self.T:
            return _full(stats.given)
        return acl_advance(stats.given, self.difficulty, self.pace(stats.epoch), self.params.delta_s)

    def state_dict(self) -> dict[str, Any]:
        return {"difficulty": self.difficulty}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.difficulty = {sid: [float(x) for x in d] for sid, d in state["difficulty"].items()}


# also "adaptive_cl", the name in the list of Table 2 ablations (docs/method.md): one class, two names
SCHEDULERS.register(AdaptiveCL, name="adaptive_cl")


@SCHEDULERS("icl")
class InSampleCL(SchedulerBase):
    """In-sample curriculum learning by sequence completion (Jia et al., ACL 2023): stage ``t``
    gives the first ``⌊n·p_t⌋`` of each sample's ``n`` target tokens. ``pace: fixed``:
    ``p_t = max(start - t·stride, 0)``, stages end when ``p`` reaches 0 (then full targets).
    ``pace: validation`` builds :class:`InSampleCLValidation` instead (adaptive)."""

    name: ClassVar[str] = "icl"

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")

        start: float = Field(0.6, ge=0.0, lt=1.0, description="p_0, the given share of each target at first")
        stride: float = Field(0.3, gt=0.0, description="decrease of p per stage (epoch)")
        pace: Literal["fixed", "validation"] = Field(
            "fixed", description="fixed: p falls by stride every epoch; validation (the paper's): p falls by "
            "stride after `patience` epoch-end evaluations on eval.select_on without a new best (needs "
            "eval.select_on)")
        patience: int = Field(1, ge=1, description="pace validation: evaluations in a row without a new best "
                              "before p falls (1: the release's rule)")

    params: Params

    def __new__(cls, params: BaseModel | None = None) -> InSampleCL:
        # one registry name, two kinds: the engine treats a scheduler as adaptive by its methods,
        # so the validation pace is a subclass with the epoch-end hook and the fixed pace stays offline
        if cls is InSampleCL and params is not None and getattr(params, "pace", "fixed") == "validation":
            return super().__new__(InSampleCLValidation)
        return super().__new__(cls)

    def plan(self, inputs: ScheduleInputs) -> CurriculumPlan:
        ratios: list[float] = []
        while (p := icl_prefix_ratio(len(ratios), self.params.start, self.params.stride)) > 0.0:
            ratios.append(p)
        zero = {sid: 0 for sid in sorted(inputs.n_steps)}
        info = {"scheduler": self.name, "prefix_ratios": ratios, "level": "token"}
        return CurriculumPlan(stages=[dict(zero) for _ in ratios], info=info, ratios=ratios)


class InSampleCLValidation(InSampleCL):
    """``icl`` with ``pace: validation``: stage 0 gives ``start``; after each epoch the epoch end's
    model-selection score (``EpochStats.validation_score``) feeds :class:`IclValidationPace`, whose
    ratio the next stage gives. Every stage has ``c = 0``."""

    epoch_stats: ClassVar[frozenset[str]] = frozenset({"validation_score"})

    def __init__(self, params: BaseModel | None = None) -> None:
        super().__init__(params)
        self.pace = self._fresh_pace()

    def _fresh_pace(self) -> IclValidationPace:
        return IclValidationPace(self.params.start, self.params.stride, self.params.patience)

    def plan(self, inputs: ScheduleInputs) -> CurriculumPlan:
        self.pace = self._fresh_pace()
        info = {"scheduler": self.name, "pace": "validation", "patience": self.params.patience, "level": "token"}
        return CurriculumPlan(stages=[_full(dict(sorted(inputs.n_steps.items())))], info=info,
                              ratios=[self.pace.ratio])

    def on_epoch_end(self, stats: EpochStats) -> dict[str, int]:
        if stats.validation_score is None:
            raise ValueError(f"icl (pace: validation): no validation score after epoch {stats.epoch}; "
                             "it needs eval.select_on")
        self.pace.update(stats.validation_score)
        return _full(stats.given)

    def next_prefix_ratio(self) -> float:
        return self.pace.ratio

    def state_dict(self) -> dict[str, Any]:
        return self.pace.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pace = IclValidationPace.from_state(state)
