"""``kpod_knapsack``: KPOD's in-rationale progressive schedule (paper §3.4–3.5,
Algorithm 1; docs/method.md, 'Progressive distillation').

Question ``i`` has steps with difficulties ``d_i[0..n_i-1]`` (Eq. 8, 0-indexed). At stage ``t``
its leading ``c_i(t)`` steps are given as input and it outputs steps ``c_i(t)+1..n_i``, whose
difficulty is ``h_i = sum(d_i[c_i:])`` (Eq. 9; **not** ``d_i[c_i+1:]``: the
steps from ``c_i`` on are the ones the question outputs).

* Budget (Eq. 10, closed form): ``D(t) = C0 + (B - C0) (t/T)^(p+1)`` with ``B = Σ_i Σ_k d_ik``
  and ``C0 = c0_frac · B``; ``D(0) = C0`` and ``D(T) = B``.
* Start: ``c_i = n_i - 1`` (each question outputs only its last step; ``init: zero`` starts at 0),
  then one top-up selection at ``t = 0`` with allowance ``C0 - H`` (nothing if ``H >= C0``).
* Stage ``t = 1, 2, ...``: allowance ``ΔD(t) = D(t) - H(t-1)`` from the *realised* ``H``, so
  unused budget carries over; a non-positive allowance selects nothing. Candidates are the
  questions with ``c_i >= 1``; moving ``Δs`` steps costs ``sum(d_i[max(c_i-Δs, 0):c_i])``; the
  selection maximises ``G(S) = Σ_{i∈S} cost_i + β Σ_k sqrt|C_k ∩ S|`` within the allowance
  (Eqs. 11–13, solver in :mod:`kpod.schedulers.knapsack`); each selected question moves once.
* Epochs: with ``stage_offset: 0`` epoch ``e <= T`` trains on the state after stage
  ``e - 1`` (epoch 1 sees about ``C0``); with ``stage_offset: 1`` epoch ``e`` uses the state after
  stage ``e`` (the literal reading of Algorithm 1). Epochs past ``T`` train on full rationales:
  :meth:`CurriculumPlan.given_steps` returns 0 there, so questions not yet at 0 jump to 0.

:func:`build_plan` is the array implementation, ``O(n log n)`` per stage with numpy; the
scheduler class wraps it for ``sample_id``-keyed inputs. Plans are pure functions of the inputs
and params (the seed is unused: ties are broken by cost, then by ``sample_id`` order).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from kpod.registry import SCHEDULERS
from kpod.schedulers import greedy_max, knapsack
from kpod.schedulers.base import CurriculumPlan, ScheduleInputs, SchedulerBase
from kpod.schedulers.step_table import SortedCandidates, StepTable, stage_dtype

__all__ = [
    "KpodKnapsack",
    "KpodKnapsackParams",
    "StepTable",
    "budget_curve",
    "build_plan",
    "output_difficulty",
    "default_T",
]


def output_difficulty(diffs: Sequence[float], c: int) -> float:
    """Eq. 9 for one question: the difficulty of the output steps ``c+1..n`` = ``sum(diffs[c:])``.

    ``c`` is the number of leading steps given as input. With ``diffs = (1.0, 0.5, 2.0)``:
    ``c = 2`` gives 2.0 (only step 3 is output) and ``c = 0`` gives 3.5.
    """
    if c < 0:
        raise ValueError(f"c must be >= 0, got {c}")
    return float(sum(diffs[c:]))


def budget_curve(t: float, T: int, B: float, C0: float, p: float) -> float:
    """Eq. 10 in closed form: ``D(t) = C0 + (B - C0) (t/T)^(p+1)``; exactly ``B`` for ``t >= T``."""
    if T < 1:
        raise ValueError(f"T must be >= 1, got {T}")
    if t >= T:
        return float(B)
    return float(C0 + (B - C0) * (max(t, 0) / T) ** (p + 1.0))


def default_T(num_epochs: int) -> int:
    """The paper's ``T = N_e / 2`` (at least 1)."""
    return max(1, num_epochs // 2)


def _checked_solver(T: int, delta_s: int, init: str, solver: str, stage_offset: int) -> Any:
    """Validate :func:`build_plan`'s arguments; return the knapsack solver named ``solver``."""
    if T < 1:
        raise ValueError(f"T must be >= 1, got {T}")
    if delta_s < 1:
        raise ValueError(f"delta_s must be >= 1, got {delta_s}")
    if stage_offset not in (0, 1):
        raise ValueError(f"stage_offset must be 0 or 1, got {stage_offset}")
    if init not in ("last_step", "zero"):
        raise ValueError(f"init must be 'last_step' or 'zero', got {init!r}")
    try:
        return knapsack.SOLVERS[solver]
    except KeyError:
        raise ValueError(
            f"unknown solver {solver!r}; choose from {sorted(knapsack.SOLVERS)}"
        ) from None


class _PlanState:
    """The state a plan evolves stage by stage: ``c`` (steps given per question), ``h`` (their
    output difficulties, Eq. 9), ``H = sum(h)`` and the candidate pool (built at the first
    selection)."""

    def __init__(self, table: StepTable, init: str, codes: np.ndarray, k: int, delta_s: int) -> None:
        n = len(table)
        dtype = stage_dtype(int(table.lengths.max()) if n else 0)
        start = np.maximum(table.lengths - 1, 0) if init == "last_step" else np.zeros(n, np.int64)
        self.table, self.c = table, start.astype(dtype)
        self.h = table.output_difficulties(self.c)  # updated for the moved questions only
        self.H = float(self.h.sum())
        self.codes, self.k, self.delta_s = codes, k, delta_s
        self.pool: SortedCandidates | None = None

    def n_candidates(self, allowance: float) -> int:
        """Questions that can still move (``c >= 1``); builds the pool once it is needed."""
        if self.pool is None and allowance > 0:
            self.pool = SortedCandidates(self.table, self.c, self.codes, self.delta_s)
        return len(self.pool) if self.pool is not None else int(np.count_nonzero(self.c >= 1))

    def select(
        self, t: int, allowance: float, solve: Any, solver: str, beta: float
    ) -> tuple[float, int, np.ndarray]:
        """Stage ``t``'s knapsack selection within ``allowance``; moves the selected questions.

        Returns ``(G, number selected, selected per cluster code)``."""
        pool, c, k = self.pool, self.c, self.k
        if not (allowance > 0 and pool is not None and len(pool)):
            return 0.0, 0, np.zeros(k, dtype=np.int64)
        if solver == "exact" and len(pool) > knapsack.EXACT_MAX_ITEMS:
            raise ValueError(
                f"solver 'exact' enumerates 2^n subsets; stage {t} has {len(pool)} candidates "
                f"(> {knapsack.EXACT_MAX_ITEMS}); use 'greedy_max'"
            )
        sel, g_val = solve(pool.cost, pool.codes, k, allowance, beta)
        moved = pool.ids[sel]
        c[moved] = np.maximum(c[moved].astype(np.int64) - self.delta_s, 0)
        per_cluster = np.bincount(pool.codes[sel], minlength=k)
        self.h[moved] = self.table.output_difficulties(c, moved)
        self.H = float(self.h.sum())  # Eq. 9 summed over all questions at the new state
        pool.advance(sel, c, self.codes)
        return g_val, int(moved.size), per_cluster


def _stage_info(
    t: int,
    stage_offset: int,
    target: float,
    allowance: float,
    H_before: float,
    H: float,
    g_val: float,
    n_sel: int,
    per_cluster: np.ndarray,
    cluster_ids: list[int],
    n_cand: int,
) -> dict[str, Any]:
    """One entry of ``info["stages"]`` (see :func:`build_plan`)."""
    return {
        "stage": t,
        "epoch": t + 1 - stage_offset if t >= stage_offset else None,
        "target_D": float(target),
        "allowance": allowance,
        "delta_D": allowance,  # ΔD(t) = D(t) - H(t-1), Eq. 11's capacity
        "delta_H": H - H_before,  # ΔH(S(t)): difficulty the selection moved to the output
        "achieved_H": H,
        "G": float(g_val),
        "F": float(g_val) - allowance,
        "selected": n_sel,
        "selected_per_cluster": {str(cid): int(per_cluster[q]) for q, cid in enumerate(cluster_ids)},
        "candidates": n_cand,
    }


def build_plan(
    diffs: Sequence[Sequence[float]],
    clusters: Sequence[int] | np.ndarray,
    T: int,
    c0_frac: float = 0.3,
    p: float = 0.5,
    beta: float = 12.0,
    delta_s: int = 1,
    init: Literal["last_step", "zero"] = "last_step",
    solver: Literal["greedy_max", "exact"] = "greedy_max",
    stage_offset: Literal[0, 1] = 0,
    as_arrays: bool = False,
) -> tuple[list[Any], dict[str, Any]]:
    """KPOD plan as Algorithm 1 builds it, stage by stage, vectorised.

    Args:
        diffs: ``diffs[i][k]`` = difficulty of step ``k`` (0-indexed) of question ``i``.
        clusters: integer cluster id of each question.
        T: number of stages (the stage at which ``D`` reaches ``B``), ``>= 1``.
        c0_frac, p, beta, delta_s, init, solver, stage_offset: see :class:`KpodKnapsackParams`.
        as_arrays: return each stage as a numpy integer array instead of a list (large data).

    Returns:
        ``(stages, info)``: ``T`` stages, ``stages[e-1][i] = c_i`` for epoch ``e``, and a
        JSON-serialisable ``info`` with ``B``, ``C0``, the initial ``H`` and, per computed stage
        (``stage`` 0..T-1, or 0..T with ``stage_offset: 1``): ``epoch``, ``target_D``
        (``D(t)``), ``allowance`` (= ``delta_D``), ``delta_H``, ``achieved_H``, ``G``, ``F = G - allowance``, ``selected``,
        ``selected_per_cluster`` and ``candidates``.
    """
    solve = _checked_solver(T, delta_s, init, solver, stage_offset)
    table = StepTable(diffs)
    n = len(table)
    codes, k = knapsack.as_codes(clusters, n)  # dense 0..K-1 in order of the ids
    raw = np.asarray(clusters).reshape(-1)
    cluster_ids = [int(x) for x in np.unique(raw)] if n else []

    B = float(table.output_difficulties(np.zeros(n, dtype=np.int64)).sum())
    C0 = float(c0_frac * B)
    state = _PlanState(table, init, greedy_max.small_int(codes, k), k, delta_s)
    params = {
        "c0_frac": float(c0_frac),
        "p": float(p),
        "beta": float(beta),
        "delta_s": int(delta_s),
        "init": init,
        "solver": solver,
        "stage_offset": int(stage_offset),
    }
    info: dict[str, Any] = {
        "B": B,
        "C0": C0,
        "T": int(T),
        "H_init": state.H,
        "n_questions": n,
        "cluster_ids": cluster_ids,
        "params": params,
        "stages": [],
    }
    stages: list[Any] = []
    for t in range(0, T + stage_offset):  # stages 0 .. T - 1 + stage_offset
        target = C0 if t == 0 else budget_curve(t, T, B, C0, p)
        allowance = float(target - state.H)
        n_cand = state.n_candidates(allowance)
        H_before = state.H
        g_val, n_sel, per_cluster = state.select(t, allowance, solve, solver, float(beta))
        info["stages"].append(
            _stage_info(
                t, stage_offset, target, allowance, H_before, state.H,
                g_val, n_sel, per_cluster, cluster_ids, n_cand,
            )
        )
        if t >= stage_offset:
            stages.append(state.c.copy())
    if not as_arrays:
        stages = [s.tolist() for s in stages]
    return stages, info


class KpodKnapsackParams(BaseModel):
    """Parameters of ``kpod_knapsack`` (and ``anti_curriculum``)."""

    model_config = ConfigDict(extra="forbid")

    T: int | None = Field(
        None, ge=1, description="stage at which the budget D reaches B; null: max(1, epochs // 2)"
    )
    c0_frac: float = Field(0.3, ge=0.0, le=1.0, description="initial budget C0 = c0_frac * B")
    p: float = Field(
        0.5, ge=0.0, description="budget-growth exponent: D(t) = C0 + (B-C0)(t/T)^(p+1)"
    )
    beta: float = Field(
        12.0, ge=0.0, description="diversity weight (units of step difficulty, nats)"
    )
    delta_s: int = Field(
        1, ge=1, description="steps a selected question moves to the output per stage"
    )
    init: Literal["last_step", "zero"] = Field(
        "last_step", description="c_i(0): n_i - 1 (output only the last step) or 0 (full rationale)"
    )
    stage_offset: Literal[0, 1] = Field(
        0, description="0: epoch e uses the state after stage e-1 (default); 1: after stage e"
    )
    solver: Literal["greedy_max", "exact"] = Field(
        "greedy_max",
        description="knapsack solver: Greedy+Max (1/2-approx) or brute force (n <= 20)",
    )


def _arrays_from_inputs(
    inputs: ScheduleInputs, who: str
) -> tuple[list[str], list[list[float]], list[int]]:
    if inputs.difficulties is None or inputs.clusters is None:
        raise ValueError(f"scheduler {who!r} needs step difficulties and question clusters")
    ids = sorted(inputs.n_steps)
    diffs: list[list[float]] = []
    clusters: list[int] = []
    for sid in ids:
        try:
            d = inputs.difficulties[sid]
            cl = inputs.clusters[sid]
        except KeyError as e:
            raise ValueError(
                f"scheduler {who!r}: no difficulty or cluster for sample {e.args[0]!r}"
            ) from None
        if len(d) != inputs.n_steps[sid]:
            raise ValueError(
                f"scheduler {who!r}: sample {sid!r} has {inputs.n_steps[sid]} steps but "
                f"{len(d)} difficulties"
            )
        diffs.append([float(x) for x in d])
        clusters.append(int(cl))
    return ids, diffs, clusters


def plan_from_inputs(
    params: KpodKnapsackParams, inputs: ScheduleInputs, who: str
) -> tuple[list[str], list[list[int]], dict[str, Any]]:
    """Run :func:`build_plan` on ``sample_id``-keyed inputs (ids sorted for determinism)."""
    ids, diffs, clusters = _arrays_from_inputs(inputs, who)
    T = params.T if params.T is not None else default_T(inputs.num_epochs)
    stages, info = build_plan(
        diffs,
        clusters,
        T,
        c0_frac=params.c0_frac,
        p=params.p,
        beta=params.beta,
        delta_s=params.delta_s,
        init=params.init,
        solver=params.solver,
        stage_offset=params.stage_offset,
    )
    return ids, stages, info


@SCHEDULERS("kpod_knapsack")
class KpodKnapsack(SchedulerBase):
    """KPOD's progressive schedule: a growing global difficulty budget filled per stage by a
    diversity-aware knapsack selection (paper Eqs. 8-13; docs/scheduling.md)."""

    name: ClassVar[str] = "kpod_knapsack"
    needs: ClassVar[frozenset[str]] = frozenset({"difficulty", "clusters"})

    class Params(KpodKnapsackParams):
        """Parameters of ``kpod_knapsack``."""

    params: KpodKnapsackParams

    def plan(self, inputs: ScheduleInputs) -> CurriculumPlan:
        ids, stages, info = plan_from_inputs(self.params, inputs, self.name)
        info = {"scheduler": self.name, **info}
        return CurriculumPlan(stages=[dict(zip(ids, s)) for s in stages], info=info)
