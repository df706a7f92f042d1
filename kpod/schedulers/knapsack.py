"""Diversity-aware knapsack selection for one KPOD stage (paper Eqs. 11–13).

Problem (Eq. 13 on the shifted objective). Items ``i`` have a cost ``c_i >= 0`` (the difficulty
that moves to the output side) and a cluster id ``k(i)``. For a capacity ``b`` (the allowance
``ΔD(t)``) and a diversity weight ``β >= 0``, maximise

    G(S) = Σ_{i∈S} c_i + β Σ_k sqrt(|C_k ∩ S|)     subject to   Σ_{i∈S} c_i <= b.

``G = F + ΔD(t)`` is Eq. 12 shifted so that ``G(∅) = 0``; it has the same maximiser as ``F`` and
is the function approximation ratios are about (``F(S) = G(S) - b``, :func:`objective_f`).

Properties (paper App. D). ``G`` is

* **normalised and non-negative**: ``G(∅) = 0``, every term is >= 0;
* **monotone**: for ``A ⊆ A'``, ``G(A') - G(A) = Σ_{i∈A'∖A} c_i + β Σ_k (sqrt|C_k∩A'| -
  sqrt|C_k∩A|) >= 0`` because costs are non-negative and cluster counts only grow;
* **submodular**: for ``A ⊆ A'`` and ``x ∉ A'`` in cluster ``k``, the modular part adds ``c_x``
  to both sets and, with ``a = |C_k∩A| <= b' = |C_k∩A'|``, ``(sqrt(a+1) - sqrt(a)) >=
  (sqrt(b'+1) - sqrt(b'))`` by concavity of the square root, so ``G(x|A) >= G(x|A')``.

Algorithm: **Greedy+Max** (G. Yaroslavtsev, S. Zhou, D. Avdiukhin, "'Bring Your Own Greedy'+Max:
Near-Optimal 1/2-Approximations for Submodular Knapsack", AISTATS 2020). It guarantees
``G(Ŝ) >= ½ · G(S*)`` for every monotone submodular ``G`` with ``G(∅) = 0`` under one knapsack
constraint. (The paper's own solver, FTGP, gives ``½ - ε``; kpod accepts any algorithm with a
proven ratio at least that good.)

1. *Greedy*: repeatedly add, among the items that still fit the remaining capacity ``R``, one
   with the largest marginal density ``G(x|S) / c_x`` (zero cost = infinite density).
2. *+Max*: for the empty set, every greedy prefix ``G_j`` and the final greedy set, compute the
   best single fitting addition ``argmax_{x∉G_j, c_x <= R_j} G(x|G_j)``. Return the best of these
   augmented prefixes and the final greedy set.

Proof sketch of ½ (see the paper, Thm. 3.1, for the full proof; all items of zero cost are taken
first and never matter below). Let ``o`` be the most expensive item of an optimal set ``O`` and
let ``i`` be the last greedy step at which ``o`` still fits next to the prefix, i.e. the largest
``i`` with ``c(G_i) + c(o) <= b``.

* If greedy ends at ``G_i`` (no later item is added), every item of ``O`` costs at most
  ``c(o) <= b - c(G_i)`` and so still fits; greedy only stops when nothing fits, hence
  ``O ⊆ G_i`` and the greedy set is optimal.
* Otherwise let ``g`` be the next greedy item, with density ``ρ = G(g|G_i)/c_g``. Every
  ``x ∈ O ∖ G_i`` fits at that moment (``c_x <= c(o)``), so ``G(x|G_i) <= ρ c_x`` by the greedy
  choice. By monotonicity and submodularity,
  ``G(O) <= G(G_i ∪ {o}) + Σ_{x∈O∖{o}} G(x|G_i) <= G(G_i ∪ {o}) + ρ (b - c(o))``.
  Greedy densities never increase (an item that fits now also fitted earlier, and its marginal
  gain only shrank), so ``G(G_{i+1}) >= ρ · c(G_{i+1}) >= ρ (b - c(o))``, because ``o`` no longer
  fits next to ``G_{i+1}``. Adding up: ``G(G_i ∪ {o}) + G(G_{i+1}) >= G(O)``. The +Max candidate
  at prefix ``i`` is worth at least ``G(G_i ∪ {o})`` and the final greedy set at least
  ``G(G_{i+1})``, so the better of the two is at least ``½ G(O)``.

The argument needs the augmentation at *every* prefix: the plain "better of the greedy set and
the best single item" (Greedy+Singleton) has an approximation ratio of at most 0.42945 for
monotone submodular objectives (Kulik, Schwartz and Shachnai, "A Refined Analysis of Submodular
Greedy", 2021, arXiv:2102.12879): the item that should complete a greedy prefix
must be tried next to that prefix, not alone (example: tests/schedulers/test_knapsack.py,
``test_plus_max_beats_greedy_plus_singleton``, where Greedy+Singleton gets 0.56 of the optimum).

The specialisation of the greedy to ``G`` and how it is vectorised: :mod:`kpod.schedulers.greedy_max`.

Ties: greedy by (density, then cost, then index); +Max prefers the final greedy set, then the
first cluster, then the longest prefix (so zero-cost items, taken first, are always kept), and
within a cluster the last item of the largest fitting cost in (cost, index) order.

Complexity: ``O(n log n)`` for the sort plus ``O(K n)`` passes and ``O(K n log n)`` binary
searches, all vectorised with numpy: about 0.15–0.35 s for ``n = 10^6``, ``K = 5`` on one busy
core of the development machine, depending on how much of the list the budget covers.
:func:`select_array` accepts a precomputed (cost, index) order, and the plan builder hands the
items over already sorted (:data:`SOLVERS`), which removes the sort.

Feasibility is ``Σ_{i∈S} c_i <= b`` with the sum taken in greedy order in float64; another
summation order may differ in the last bits. A non-positive capacity selects nothing, even
zero-cost items (a stage whose budget grows by nothing moves no question).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from kpod.schedulers.greedy_max import greedy_max, sqrt_gain

__all__ = [
    "select",
    "select_array",
    "select_exact",
    "value",
    "objective_f",
    "sqrt_gain",
    "EXACT_MAX_ITEMS",
]

EXACT_MAX_ITEMS = 20


def as_costs(costs: Any) -> np.ndarray:
    c = np.asarray(costs, dtype=np.float64).reshape(-1)
    if c.size and not (np.isfinite(c).all() and (c >= 0).all()):
        raise ValueError("costs must be finite and non-negative")
    return c


def as_codes(clusters: Any, n: int) -> tuple[np.ndarray, int]:
    """Map arbitrary integer cluster ids to dense codes ``0..K-1`` (order of the ids)."""
    raw = np.asarray(clusters).reshape(-1)
    if raw.size != n:
        raise ValueError(f"costs has {n} items but clusters has {raw.size}")
    if n == 0:
        return np.zeros(0, dtype=np.intp), 0
    if raw.dtype.kind == "b":
        raw = raw.astype(np.int64)
    elif raw.dtype.kind not in "iu":
        as_int = raw.astype(np.int64)
        if not np.array_equal(as_int, raw):
            raise ValueError("cluster ids must be integers")
        raw = as_int
    lo, hi = int(raw.min()), int(raw.max())
    if hi - lo <= 4 * n + 16:  # O(n) remap through a presence table
        shifted = (raw - lo).astype(np.intp, copy=False)
        present = np.bincount(shifted, minlength=hi - lo + 1) > 0
        table = np.cumsum(present) - 1
        return table[shifted].astype(np.intp, copy=False), int(present.sum())
    uniq, inv = np.unique(raw, return_inverse=True)
    return inv.reshape(-1).astype(np.intp, copy=False), int(uniq.size)


def value(costs: Any, clusters: Any, selected: Any, beta: float) -> float:
    """``G(S) = Σ_{i∈S} c_i + β Σ_k sqrt(|C_k ∩ S|)`` for the indices in ``selected``."""
    c = as_costs(costs)
    codes, k = as_codes(clusters, c.size)
    sel = np.unique(np.asarray(selected, dtype=np.intp).reshape(-1))
    if sel.size and (sel[0] < 0 or sel[-1] >= c.size):
        raise IndexError("selected index out of range")
    counts = np.bincount(codes[sel], minlength=k).astype(np.float64)
    return float(c[sel].sum() + beta * np.sqrt(counts).sum())


def objective_f(costs: Any, clusters: Any, selected: Any, beta: float, budget: float) -> float:
    """Eq. 12 as the paper prints it: ``F(S) = -(b - Σ_{i∈S} c_i) + β Σ_k sqrt|C_k∩S| = G(S) - b``."""
    return value(costs, clusters, selected, beta) - float(budget)


def checked_order(costs: np.ndarray, order: Any) -> np.ndarray:
    o = np.asarray(order, dtype=np.intp).reshape(-1)
    n = costs.size
    if o.size != n or (
        n and (o.min() < 0 or o.max() >= n or not (np.bincount(o, minlength=n) == 1).all())
    ):
        raise ValueError("order must be a permutation of the item indices")
    if n > 1:
        a, b = costs[o[:-1]], costs[o[1:]]
        if not ((a < b) | ((a == b) & (o[:-1] < o[1:]))).all():
            raise ValueError("order must sort the items by (cost, index)")
    return o


def solve(
    costs: Any,
    clusters: Any,
    budget: float,
    beta: float,
    order: Any = None,
    check_order: bool = True,
) -> tuple[np.ndarray, float]:
    c = as_costs(costs)
    codes, k = as_codes(clusters, c.size)
    if beta < 0 or not np.isfinite(beta):
        raise ValueError(f"beta must be finite and >= 0, got {beta}")
    budget = float(budget)
    if np.isnan(budget):
        raise ValueError("budget is NaN")
    if order is None:
        by_cost = None
    elif check_order:
        by_cost = checked_order(c, order)
    else:
        by_cost = np.asarray(order, dtype=np.intp)
    if c.size == 0 or budget <= 0:
        return np.zeros(0, dtype=np.intp), 0.0
    return greedy_max(c, codes, k, budget, float(beta), by_cost)


def select(
    costs: Sequence[float] | np.ndarray,
    clusters: Sequence[int] | np.ndarray,
    budget: float,
    beta: float,
) -> list[int]:
    """Greedy+Max selection maximising ``G`` under ``Σ cost <= budget`` (½-approximation).

    Args:
        costs: non-negative item costs (any array-like).
        clusters: integer cluster id per item (any integers; need not be dense).
        budget: knapsack capacity; ``<= 0`` selects nothing.
        beta: diversity weight ``β >= 0``.

    Returns:
        Sorted, unique indices of the selected items. Deterministic: ties in density are broken
        by cost, then index.
    """
    return solve(costs, clusters, budget, beta)[0].tolist()


def select_array(
    costs: Any, clusters: Any, budget: float, beta: float, order: Any = None
) -> tuple[np.ndarray, float]:
    """Like :func:`select`, returning ``(sorted index array, G value)`` without a Python list.

    ``order`` optionally gives the permutation that sorts the items by ``(cost, index)``, for
    callers that maintain it incrementally (the plan builder: between stages only the moved
    questions change cost). It is checked in ``O(n)`` and saves the solver's ``O(n log n)`` sort.
    """
    return solve(costs, clusters, budget, beta, order)


def select_exact(
    costs: Sequence[float] | np.ndarray,
    clusters: Sequence[int] | np.ndarray,
    budget: float,
    beta: float,
) -> list[int]:
    """Exact maximiser of ``G`` by enumerating all ``2^n`` subsets (``n <= 20``).

    For tests and ``solver: exact`` on tiny data. Ties go to the subset whose bit mask (item ``i``
    = bit ``i``) is smallest. A non-positive budget selects nothing, as in :func:`select`.
    """
    c = as_costs(costs)
    codes, k = as_codes(clusters, c.size)
    n = c.size
    if n > EXACT_MAX_ITEMS:
        raise ValueError(f"select_exact enumerates 2^n subsets; n = {n} > {EXACT_MAX_ITEMS}")
    if n == 0 or budget <= 0:
        return []
    masks = ((np.arange(1 << n, dtype=np.int64)[:, None] >> np.arange(n)) & 1).astype(np.float64)
    total = masks @ c
    onehot = np.zeros((n, k))
    onehot[np.arange(n), codes] = 1.0
    g = total + beta * np.sqrt(masks @ onehot).sum(axis=1)
    # feasibility up to float summation order (the greedy sums in its own order): 1e-12 relative
    g[total > budget * (1 + 1e-12) + 1e-12] = -np.inf
    best = int(np.argmax(g))
    return [i for i in range(n) if best >> i & 1]


def exact_array(
    costs: Any, clusters: Any, budget: float, beta: float, order: Any = None
) -> tuple[np.ndarray, float]:
    sel = np.asarray(select_exact(costs, clusters, budget, beta), dtype=np.intp)
    return sel, value(costs, clusters, sel, beta) if sel.size else 0.0


def sorted_greedy_max(
    costs: np.ndarray, codes: np.ndarray, k: int, budget: float, beta: float
) -> tuple[np.ndarray, float]:
    # plan builder: items already in (cost, id) order, dense codes, budget > 0, n >= 1
    return greedy_max(costs, codes, k, budget, beta, presorted=True)


def sorted_exact(
    costs: np.ndarray, codes: np.ndarray, k: int, budget: float, beta: float
) -> tuple[np.ndarray, float]:
    return exact_array(costs, codes, budget, beta)


# Used by the plan builder on items sorted by (cost, id):
# name -> (costs, dense codes, K, budget, beta) -> (sorted positions, G)
SOLVERS: dict[str, Any] = {"greedy_max": sorted_greedy_max, "exact": sorted_exact}
