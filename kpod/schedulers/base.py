"""Contract of a curriculum scheduler, and :class:`SchedulerBase`, the base class of every one
(the ``SCHEDULERS`` registry accepts only its subclasses).

A scheduler turns per-sample step counts (and, if it declares ``needs``, step difficulties and
question clusters) into a :class:`CurriculumPlan`: for each stage, how many leading steps
``c`` of each sample are given as input. Stage ``e - 1`` is used by epoch ``e``;
epochs past the last stage train on full rationales (``c = 0``). Plans are pure functions of
the inputs, params and seed.

An :class:`AdaptiveScheduler` also sees the training: after each epoch but the last the engine
measures the :class:`EpochStats` it asks for with the current student and calls
``on_epoch_end``, whose answer is the next epoch's stage; the plan grows as training goes
(docs/schedulers_hook.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

from pydantic import BaseModel

from kpod.component import Component


@dataclass
class ScheduleInputs:
    n_steps: dict[str, int]
    num_epochs: int
    seed: int
    difficulties: dict[str, list[float]] | None = None
    clusters: dict[str, int] | None = None


@dataclass
class CurriculumPlan:
    """``stages[t][sample_id] = c``; epoch ``e`` (1-based) uses ``stages[e - 1]``.

    ``ratios`` (token-level curricula such as ``icl``; ``None`` for step-level plans):
    ``ratios[t]`` is the share ``p`` of each sample's target (under ``c``) that stage ``t`` also
    gives as input, the leading ``⌊n·p⌋`` target tokens (cut at a character, the collator's
    ``prefix_ratio``). One entry per stage; ``plan.json`` carries the key only when set."""

    stages: list[dict[str, int]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    ratios: list[float] | None = None
    # ``{sample_id: n_steps}`` of the records whose whole rationale is always input
    # (``meta["given"] == "all"``: SCOTT's counterfactuals). The collator gives them every step in
    # every epoch whatever ``stages`` says, so their ``c`` there is the scheduler's and unused;
    # this field says what is trained on (display only: the engine passes ``stages`` on, so
    # training and the scheduler's view are unchanged). ``plan.json`` has the key only when set.
    given_all: dict[str, int] | None = None

    def __post_init__(self) -> None:
        if self.ratios is not None:
            if len(self.ratios) != len(self.stages):
                raise ValueError(f"curriculum plan: {len(self.ratios)} prefix ratios for {len(self.stages)} stages")
            bad = [r for r in self.ratios if not 0.0 <= r < 1.0]
            if bad:
                raise ValueError(f"curriculum plan: prefix ratios must be in [0, 1), got {bad[:3]}")

    def given_steps(self, epoch: int, sample_id: str) -> int:
        """``c`` of ``sample_id`` in epoch ``epoch`` (1-based); 0 past the last stage."""
        t = epoch - 1
        if t < 0:
            raise ValueError(f"epochs are 1-based, got {epoch}")
        if t >= len(self.stages):
            return 0
        try:
            return self.stages[t][sample_id]
        except KeyError:
            raise KeyError(f"stage {t} of the curriculum plan has no entry for sample_id {sample_id!r}") from None

    def prefix_ratio(self, epoch: int) -> float:
        """The given share of each target in epoch ``epoch`` (1-based): 0 for step-level plans
        and past the last stage."""
        t = epoch - 1
        if t < 0:
            raise ValueError(f"epochs are 1-based, got {epoch}")
        if self.ratios is None or t >= len(self.ratios):
            return 0.0
        return self.ratios[t]

    def effective_stages(self) -> list[dict[str, int]]:
        """``stages`` with each ``given_all`` record at its step count: the ``c`` the collator
        trains on (for reports; the engine uses ``stages``)."""
        over = self.given_all or {}
        return [{sid: over.get(sid, c) for sid, c in stage.items()} for stage in self.stages]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"stages": self.stages, "info": self.info}
        if self.ratios is not None:  # step-level plans keep their plan.json unchanged
            out["ratios"] = self.ratios
        if self.given_all:  # likewise: only plans with whole-rationale-given records carry it
            out["given_all"] = self.given_all
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CurriculumPlan:
        ratios, given_all = data.get("ratios"), data.get("given_all")
        return cls(
            stages=[{k: int(v) for k, v in s.items()} for s in data["stages"]],
            info=data.get("info", {}),
            ratios=[float(r) for r in ratios] if ratios is not None else None,
            given_all={k: int(v) for k, v in given_all.items()} if given_all else None,
        )


class Scheduler(Protocol):
    name: ClassVar[str]
    Params: ClassVar[type[BaseModel]]
    needs: ClassVar[frozenset[str]]  # subset of {"difficulty", "clusters"}

    def plan(self, inputs: ScheduleInputs) -> CurriculumPlan: ...


# the statistics an adaptive scheduler may ask for (``epoch_stats``): two per sample, measured
# on the training set, and the epoch end's model-selection score
PER_SAMPLE_STATS = frozenset({"output_nll", "step_nll"})
EPOCH_STAT_NAMES = PER_SAMPLE_STATS | {"validation_score"}


@dataclass
class EpochStats:
    """Per-sample statistics measured by the engine with the current student at an epoch end
    (eval mode, no gradient, every training sample). Only the statistics the scheduler asks for
    in ``epoch_stats`` are filled; the others are empty dicts."""

    epoch: int  # the epoch that just ended (1-based)
    given: dict[str, int]  # leading steps given as input during that epoch, per sample_id
    # mean NLL (nats per token, unweighted) of the sample's target part under ``given``: the
    # rationale steps from ``c`` on, the answer sentence and EOS (exactly the tokens trained on)
    output_nll: dict[str, float] = field(default_factory=dict)
    # mean NLL per rationale step with the full rationale as target (c = 0) under the current
    # student, i.e. step difficulty re-measured (unweighted); [] for a sample without steps
    step_nll: dict[str, list[float]] = field(default_factory=dict)
    # the model-selection score of the evaluation at this epoch end (``eval.select_on`` accuracy,
    # higher is better; the engine evaluates at every epoch end when it is asked for, even with
    # ``eval.select_every_steps``); None when not asked for. A recipe whose scheduler asks for it
    # with ``eval.select_on: null`` is refused at validation.
    validation_score: float | None = None


@runtime_checkable
class AdaptiveScheduler(Scheduler, Protocol):
    """A scheduler that also sees the training. ``plan(inputs)`` gives at least stage 0 (epoch 1);
    after each epoch ``e < train.epochs`` the engine measures ``epoch_stats`` and calls
    ``on_epoch_end(stats)``, which returns the stage used by epoch ``e + 1``: ``{sample_id: c}``
    for every training sample, ``0 <= c <= n_steps``. Its state is saved in every checkpoint and
    restored on resume, so a resumed run continues exactly; ``on_epoch_end`` must be a
    deterministic function of the state and the statistics."""

    epoch_stats: ClassVar[frozenset[str]]  # subset of EPOCH_STAT_NAMES

    def on_epoch_end(self, stats: EpochStats) -> dict[str, int]: ...

    def next_prefix_ratio(self) -> float | None: ...  # see SchedulerBase.next_prefix_ratio

    def state_dict(self) -> dict[str, Any]: ...  # JSON-serialisable

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def is_adaptive(scheduler: Any) -> bool:
    """Whether ``scheduler`` implements the epoch-end hook (every member of AdaptiveScheduler)."""
    return isinstance(scheduler, AdaptiveScheduler)


class SchedulerBase(Component):
    """Shared ``Params``/``__init__`` (:class:`~kpod.component.Component`), the default ``needs``
    (nothing beyond the step counts) and the default answer of the token-level hook (none)."""

    # subset of {"difficulty", "clusters"}: what the engine computes for ``plan``'s inputs
    needs: ClassVar[frozenset[str]] = frozenset()

    def plan(self, inputs: ScheduleInputs) -> CurriculumPlan:
        raise NotImplementedError(f"{type(self).__name__}.plan")

    def next_prefix_ratio(self) -> float | None:
        """The prefix ratio, in [0, 1), of the stage this scheduler gave last (by ``plan()``
        before the first epoch end, then by ``on_epoch_end``): a token-level adaptive scheduler
        (its plan has ``ratios``) overrides it, and the engine grows ``plan.ratios`` with it.
        ``None`` (this default): the stages it gives carry no prefix ratio."""
        return None
