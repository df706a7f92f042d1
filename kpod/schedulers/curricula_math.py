"""Pure math of the Table 2 curricula that replace KPOD's schedule: SPL, ACL and ICL.

No engine imports: every function maps plain ``sample_id``-keyed dicts (or numbers) to new ones,
so the schedulers that wire them to the epoch-end hook (``EpochStats``, docs/baselines.md) stay
thin. A *stage* is ``{sample_id: c}``, ``c`` = leading rationale steps given as input;
questions move toward ``c = 0`` (full rationale as target), ``delta_s`` steps at a time.

* **SPL** (Kumar, Packer, Koller, NeurIPS 2010): a question is "easy" when its current loss is
  under the threshold ``λ`` (the paper's ``1/K``); easy questions advance; ``λ`` grows by the
  factor ``μ`` each stage (the paper divides ``K`` by ``μ``).
* **ACL** (Kong et al., ICCV 2021): difficulty starts from the initial model and is re-measured by
  the current one, ``d ← (1-α)·d + α·ℓ_current``; an exponential pacing function gives the share
  of the data set's rationale steps that are on the output side; the easiest moves fill it.
* **ICL** (Jia et al., ACL 2023): token level; the leading ``⌊p·n⌋`` of a sample's ``n`` target
  tokens are given (no loss) and ``p`` falls from ``p_start`` by ``stride`` (fixed pace, or the
  paper's validation-driven pace in :class:`IclValidationPace`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = [
    "IclValidationPace",
    "acl_advance",
    "acl_growth_for_stages",
    "acl_pace",
    "acl_update_difficulty",
    "icl_prefix_ratio",
    "icl_step_cut",
    "spl_advance",
    "spl_easy",
    "spl_initial_lambda",
    "spl_lambda",
]


def _check_given(given: Mapping[str, int], delta_s: int) -> None:
    if delta_s < 1:
        raise ValueError(f"delta_s must be >= 1, got {delta_s}")
    bad = [sid for sid, c in given.items() if c < 0]
    if bad:
        raise ValueError(f"given steps must be >= 0; negative for {bad[:3]}")


# ---------------------------------------------------------------------------------------- SPL


def spl_initial_lambda(losses: Mapping[str, float], quantile: float = 0.5) -> float:
    """``λ_1``: the ``quantile`` of the first measured losses (kpod's choice; the paper sets the
    initial ``K`` by hand per task). With 0.5 about half the questions count as easy at first."""
    if not 0.0 < quantile <= 1.0:
        raise ValueError(f"spl.init_quantile must be in (0, 1], got {quantile}")
    if not losses:
        raise ValueError("spl: no losses to set the initial threshold from")
    vals = np.asarray(sorted(losses.values()), dtype=np.float64)
    if not np.all(np.isfinite(vals)):
        raise ValueError("spl: non-finite loss among the first measured losses")
    return float(np.quantile(vals, quantile))


def spl_lambda(stage: int, lam0: float, mu: float) -> float:
    """``λ_t = λ_0 · μ^t``: the paper's annealing ``K ← K/μ`` written for ``λ = 1/K``."""
    if stage < 0:
        raise ValueError(f"stage must be >= 0, got {stage}")
    if mu < 1.0:
        raise ValueError(f"spl.mu must be >= 1 (the threshold grows), got {mu}")
    if lam0 <= 0.0:
        raise ValueError(f"spl: initial threshold must be > 0, got {lam0}")
    return float(lam0 * mu**stage)


def spl_easy(losses: Mapping[str, float], lam: float) -> set[str]:
    """The questions SPL selects (``v_i = 1``): loss strictly under ``λ``, as in the paper's
    closed-form ``v_i = 1[f_i < 1/K]``."""
    return {sid for sid, loss in losses.items() if loss < lam}


def spl_advance(
    given: Mapping[str, int], losses: Mapping[str, float], lam: float, delta_s: int = 1
) -> dict[str, int]:
    """Next stage: every question with ``c > 0`` whose loss is under ``λ`` gives up ``delta_s``
    input steps (clipped at 0); the rest keep ``c``. A question still to move needs a loss."""
    _check_given(given, delta_s)
    missing = [sid for sid, c in given.items() if c > 0 and sid not in losses]
    if missing:
        raise KeyError(f"spl: no measured loss for {len(missing)} sample_ids, e.g. {missing[:3]}")
    easy = spl_easy({sid: losses[sid] for sid, c in given.items() if c > 0}, lam)
    return {sid: max(c - delta_s, 0) if sid in easy else c for sid, c in given.items()}


# ---------------------------------------------------------------------------------------- ACL


def acl_update_difficulty(
    previous: Mapping[str, Sequence[float]], measured: Mapping[str, Sequence[float]], alpha: float
) -> dict[str, list[float]]:
    """Re-measured difficulty per step: ``d ← (1-α)·d + α·ℓ_current`` (α = 1: current loss only).

    ``previous`` starts as the initial student's step difficulties; ``measured`` is the current
    student's mean NLL per step (``EpochStats.step_nll``). Step counts must match."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"acl.alpha must be in [0, 1], got {alpha}")
    out: dict[str, list[float]] = {}
    for sid, old in previous.items():
        if sid not in measured:
            raise KeyError(f"acl: no re-measured step losses for {sid!r}")
        new = measured[sid]
        if len(new) != len(old):
            raise ValueError(f"acl: {sid!r} has {len(old)} step difficulties but {len(new)} measured")
        out[sid] = [(1.0 - alpha) * float(d) + alpha * float(x) for d, x in zip(old, new)]
    return out


def acl_pace(stage: int, start: float, growth: float, every: int = 1) -> float:
    """Exponential pacing ``g(t) = min(1, start · growth^⌊t/every⌋)``: the share of the data set's
    rationale steps on the output side at stage ``t``."""
    if stage < 0 or every < 1:
        raise ValueError(f"stage must be >= 0 and every >= 1, got {stage}, {every}")
    if not 0.0 < start <= 1.0 or growth < 1.0:
        raise ValueError(f"acl: need 0 < start <= 1 and growth >= 1, got {start}, {growth}")
    return float(min(1.0, start * growth ** (stage // every)))


def acl_growth_for_stages(start: float, stages: int) -> float:
    """The ``growth`` with ``g(stages) = 1``: ``(1/start)^(1/stages)`` — so ACL finishes at the
    same stage ``T`` as KPOD's budget when the recipe asks for it."""
    if stages < 1 or not 0.0 < start <= 1.0:
        raise ValueError(f"acl: need stages >= 1 and 0 < start <= 1, got {stages}, {start}")
    return float((1.0 / start) ** (1.0 / stages))


def acl_advance(
    given: Mapping[str, int],
    difficulty: Mapping[str, Sequence[float]],
    target_share: float,
    delta_s: int = 1,
) -> dict[str, int]:
    """Move the easiest next steps to the output side until ``target_share`` of all steps is there.

    A candidate is a question with ``c > 0``; its cost is the re-measured difficulty of the steps
    it would output next, ``Σ d[max(c-Δs,0):c]``. Candidates are taken in (cost, sample_id) order,
    each at most once per stage, while the output share is below the target. Returns the stage."""
    _check_given(given, delta_s)
    total = sum(len(difficulty[sid]) for sid in given)
    if total == 0:
        return dict(given)
    for sid, c in given.items():
        if c > len(difficulty[sid]):
            raise ValueError(f"acl: {sid!r} gives {c} steps but has {len(difficulty[sid])}")
    output = sum(len(difficulty[sid]) - c for sid, c in given.items())
    need = math.ceil(target_share * total - 1e-9) - output
    cands = sorted(
        (sum(difficulty[sid][max(c - delta_s, 0) : c]), sid) for sid, c in given.items() if c > 0
    )
    out = dict(given)
    for _, sid in cands:
        if need <= 0:
            break
        moved = min(delta_s, out[sid])
        out[sid] -= moved
        need -= moved
    return out


# ---------------------------------------------------------------------------------------- ICL


def icl_prefix_ratio(stage: int, start: float = 0.6, stride: float = 0.3) -> float:
    """Fixed pace: the given share of each target, ``p_t = max(p_start - t·s, 0)`` (the paper's
    ``gradual_start`` 0.6 and ``gradual_ratio`` 0.3); the target share is ``1 - p_t``."""
    if stage < 0:
        raise ValueError(f"stage must be >= 0, got {stage}")
    if not 0.0 <= start < 1.0 or stride <= 0.0:
        raise ValueError(f"icl: need 0 <= start < 1 and stride > 0, got {start}, {stride}")
    return max(round(start - stage * stride, 10), 0.0)


@dataclass
class IclValidationPace:
    """The paper's own pace (its released ``gradual_mode: decrease``), validation-driven: a new
    best validation score keeps ``p``; after ``patience`` evaluations in a row without one, ``p``
    drops by ``stride`` (never below 0) and the count starts again. ``patience = 1`` is the
    release's rule: ``run_summarization_icl.py`` lowers ``p`` after every non-improving epoch
    (its ``--early_stop`` only ends training once ``p = 0``; kpod trains ``train.epochs`` and
    model selection keeps the best). The first score is a new best. JSON-serialisable via
    :meth:`state_dict`."""

    ratio: float = 0.6
    stride: float = 0.3
    patience: int = 1
    best: float | None = None
    bad: int = 0  # evaluations in a row without a new best since the last drop

    def __post_init__(self) -> None:
        if not 0.0 <= self.ratio < 1.0 or self.stride <= 0.0 or self.patience < 1:
            raise ValueError(f"icl: need 0 <= ratio < 1, stride > 0 and patience >= 1, "
                             f"got {self.ratio}, {self.stride}, {self.patience}")

    def update(self, score: float) -> float:
        """Feed one validation score (higher is better); returns ``p`` for the next epoch."""
        if self.best is None or score > self.best:
            self.best, self.bad = float(score), 0
            return self.ratio
        self.bad += 1
        if self.bad >= self.patience:
            self.ratio, self.bad = max(round(self.ratio - self.stride, 10), 0.0), 0
        return self.ratio

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> IclValidationPace:
        return cls(**dict(state))


def icl_step_cut(step_first_tokens: Sequence[int], answer_first_token: int, given_tokens: int) -> int:
    """Step-level approximation of an ICL cut: how many whole steps lie before target token
    ``given_tokens`` (indices relative to the target; a step is whole when the next step, or the
    answer sentence, starts at or before the cut). Rounds *down* to a step boundary, so the
    target is never shorter than ICL's."""
    if given_tokens < 0:
        raise ValueError(f"given_tokens must be >= 0, got {given_tokens}")
    ends = [*list(step_first_tokens)[1:], answer_first_token]
    if any(b < a for a, b in zip(step_first_tokens, ends)):
        raise ValueError("icl: step starts must be increasing and precede the answer")
    return sum(1 for e in ends if e <= given_tokens)
