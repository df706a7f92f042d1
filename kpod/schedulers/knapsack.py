"""Diversity-aware knapsack selection for one KPOD stage (spec §5, §10(j)).

Problem (Eq. 13 on the shifted objective). Items ``i`` have a cost ``c_i >= 0`` (the difficulty
that moves to the output side) and a cluster id ``k(i)``. For a capacity ``b`` (the allowance
``ΔD(t)``) and a diversity weight ``β >= 0``, maximise

    G(S) = Σ_{i∈S} c_i + β Σ_k sqrt(|C_k ∩ S|)     subject to   Σ_{i∈S} c_i <= b.

``G = F + ΔD(t)`` is Eq. 12 shifted so that ``G(∅) = 0``; it has the same maximiser as ``F`` and
is the function approximation ratios are about (``F(S) = G(S) - b``, :func:`objective_f`).

Properties (spec §5, paper App. D). ``G`` is

* **normalised and non-negative**: ``G(∅) = 0``, every term is >= 0;
* **monotone**: for ``A ⊆ A'``, ``G(A') - G(A) = Σ_{i∈A'∖A} c_i + β Σ_k (sqrt|C_k∩A'| -
  sqrt|C_k∩A|) >= 0`` because costs are non-negative and cluster counts only grow;
* **submodular**: for ``A ⊆ A'`` and ``x ∉ A'`` in cluster ``k``, the modular part adds ``c_x``
  to both sets and, with ``a = |C_k∩A| <= b' = |C_k∩A'|``, ``(sqrt(a+1) - sqrt(a)) >=
  (sqrt(b'+1) - sqrt(b'))`` by concavity of the square root, so ``G(x|A) >= G(x|A')``.

Algorithm: **Greedy+Max** (G. Yaroslavtsev, S. Zhou, D. Avdiukhin, "'Bring Your Own Greedy'+Max:
Near-Optimal 1/2-Approximations for Submodular Knapsack", AISTATS 2020). It guarantees
``G(Ŝ) >= ½ · G(S*)`` for every monotone submodular ``G`` with ``G(∅) = 0`` under one knapsack
constraint. (The paper's own solver, FTGP, gives ``½ - ε``; spec §10(j) accepts any algorithm with
a proven ``½ - ε`` ratio.)

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
Greedy", 2021, arXiv:2102.12879; spec §10(j)): the item that should complete a greedy prefix
must be tried next to that prefix, not alone (example: tests/test_knapsack.py,
``test_plus_max_beats_greedy_plus_singleton``, where Greedy+Singleton gets 0.56 of the optimum).

Specialisation to ``G`` (spec §10(j)). The marginal gain of ``x`` in cluster ``k`` with ``s_k``
items of ``k`` already taken is ``c_x + β (sqrt(s_k+1) - sqrt(s_k))``, so its density is
``1 + β g(s_k) / c_x`` with ``g(s) = 1/(sqrt(s+1) + sqrt(s))``. Within a cluster the cheapest
remaining item therefore has the highest density, greedy takes each cluster's items in order of
``(cost, index)``, and the ``j``-th item of cluster ``k`` enters with ``s_k = j``. Its density key
``β g(j) / c`` is non-increasing along the cluster's list (also in floating point: every operation
is monotone), so the greedy order is the merge of the per-cluster lists, i.e. one global stable
sort by ``(-key, cost, index)`` — which is also the tie-break rule. An item that does not fit
closes its cluster (the cluster's later items cost at least as much and ``R`` only shrinks), so
the greedy with skips is at most ``K + 1`` passes of ``cumsum``/``searchsorted`` over the global
order. In the +Max phase, the items of cluster ``k`` in prefix ``G_j`` are the first ``s_{kj}``
of its list, so the best fitting addition from ``k`` is the largest cost ``<= R_j`` in the
unselected suffix: one ``searchsorted`` per cluster over all prefixes' remaining capacities.

Implementation notes (none changes the result):

* the (cost, index) sort packs the index into the low mantissa bits of the costs' IEEE patterns
  and sorts integers, then re-sorts exactly the rare runs whose truncated costs collide;
* only the head of each cluster's list whose own cumulative cost fits the budget (plus the item
  that closes the cluster) can ever be examined by the greedy, so only those heads are merged;
  the merge is a stable sort of K sorted runs (timsort: ``O(n log K)``);
* the greedy passes scan geometrically growing windows from each failure;
* an augmentation of prefix ``j`` is worth at most ``G(G_j) + min(R_j, c_max) + β``, which is
  non-decreasing in ``j``, so the +Max phase only visits the prefixes whose bound can beat the
  final greedy set (usually a short tail).

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
zero-cost items (spec §10(i): a non-positive allowance selects nothing).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

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


def sqrt_gain(s: np.ndarray | int) -> np.ndarray:
    """``sqrt(s + 1) - sqrt(s)`` computed as ``1 / (sqrt(s + 1) + sqrt(s))`` (monotone in float)."""
    s = np.asarray(s, dtype=np.float64)
    return 1.0 / (np.sqrt(s + 1.0) + np.sqrt(s))


def _as_costs(costs: Any) -> np.ndarray:
    c = np.asarray(costs, dtype=np.float64).reshape(-1)
    if c.size and not (np.isfinite(c).all() and (c >= 0).all()):
        raise ValueError("costs must be finite and non-negative")
    return c


def _as_codes(clusters: Any, n: int) -> tuple[np.ndarray, int]:
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


def _small_int(codes: np.ndarray, k: int) -> np.ndarray:
    """Narrow dtype so numpy's stable sort uses radix sort."""
    if codes.dtype in (np.uint8, np.uint16):
        return codes
    if k <= 256:
        return codes.astype(np.uint8)
    if k <= 65536:
        return codes.astype(np.uint16)
    return codes


def value(costs: Any, clusters: Any, selected: Any, beta: float) -> float:
    """``G(S) = Σ_{i∈S} c_i + β Σ_k sqrt(|C_k ∩ S|)`` for the indices in ``selected``."""
    c = _as_costs(costs)
    codes, k = _as_codes(clusters, c.size)
    sel = np.unique(np.asarray(selected, dtype=np.intp).reshape(-1))
    if sel.size and (sel[0] < 0 or sel[-1] >= c.size):
        raise IndexError("selected index out of range")
    counts = np.bincount(codes[sel], minlength=k).astype(np.float64)
    return float(c[sel].sum() + beta * np.sqrt(counts).sum())


def objective_f(costs: Any, clusters: Any, selected: Any, beta: float, budget: float) -> float:
    """Eq. 12 as the paper prints it: ``F(S) = -(b - Σ_{i∈S} c_i) + β Σ_k sqrt|C_k∩S| = G(S) - b``."""
    return value(costs, clusters, selected, beta) - float(budget)


def _fix_ties(
    arr: np.ndarray, sorted_vals: np.ndarray, tiebreak: np.ndarray | None = None
) -> np.ndarray:
    """Re-order, in place, each run of equal ``sorted_vals`` by ascending tie-break key.

    ``arr`` holds items (indices) sorted by some value and ``sorted_vals`` those values in the
    same order. The tie-break key of an item is the item itself, or ``tiebreak[item]``. Only
    tied positions are touched, so the cost is proportional to the number of ties (rare for
    continuous costs).
    """
    if arr.size < 2:
        return arr
    eq = sorted_vals[1:] == sorted_vals[:-1]
    if not eq.any():
        return arr
    tied = np.zeros(arr.size, dtype=bool)
    tied[1:] |= eq
    tied[:-1] |= eq
    pos = np.flatnonzero(tied)
    group = np.cumsum(np.concatenate(([True], ~eq)))[pos]  # run id, ascending with position
    items = arr[pos]
    key = items if tiebreak is None else tiebreak[items]
    arr[pos] = items[np.lexsort((key, group))]
    return arr


def _argsort_ties_by_index(values: np.ndarray) -> np.ndarray:
    """Argsort of non-negative floats ascending, ties by index.

    For large inputs the index is packed into the low mantissa bits of each value's IEEE bit
    pattern (monotone for non-negative floats) and the packed integers are sorted, which is
    about 1.5x faster than numpy's argsort; runs whose truncated values collide are then
    re-sorted exactly by (value, index). Small inputs use argsort plus :func:`_fix_ties`.
    """
    n = values.size
    if n < 4096 or n >= 1 << 40:
        perm = np.argsort(values)
        return _fix_ties(perm, values[perm])
    shift = np.uint64((n - 1).bit_length())
    bits = (values + 0.0).view(np.uint64)  # + 0.0 turns -0.0 into +0.0
    keys = (bits >> shift) << shift
    keys |= np.arange(n, dtype=np.uint64)
    keys.sort()
    perm = (keys & np.uint64((1 << int(shift)) - 1)).astype(np.intp)
    keys >>= shift
    eq = keys[1:] == keys[:-1]
    if eq.any():  # truncated collisions (and exact ties): restore (value, index) order
        tied = np.zeros(n, dtype=bool)
        tied[1:] |= eq
        tied[:-1] |= eq
        pos = np.flatnonzero(tied)
        group = np.cumsum(np.concatenate(([True], ~eq)))[pos]
        items = perm[pos]
        perm[pos] = items[np.lexsort((items, values[items], group))]
    return perm


def _eligible_length(ck: np.ndarray, budget: float) -> int:
    """Items of one cluster's cost-sorted list that the greedy can ever examine: the prefix whose
    own cumulative cost fits the budget plus the item that closes the cluster (plus slack
    against rounding). Looks only at a geometrically growing head of the list."""
    size, length = ck.size, 1024
    limit = budget * (1 + 1e-9) + 1e-300
    while True:
        length = min(length, size)
        ccum = np.cumsum(ck[:length])
        if ccum[-1] > limit or length == size:
            return min(int(np.searchsorted(ccum, limit, side="right")) + 1, size)
        length *= 4


def _greedy_max(
    costs: np.ndarray,
    codes: np.ndarray,
    k: int,
    budget: float,
    beta: float,
    by_cost: np.ndarray | None = None,
    presorted: bool = False,
) -> tuple[np.ndarray, float]:
    """Greedy+Max on dense cluster codes; returns (sorted selected indices, G value).

    ``by_cost``, if given, is the permutation sorting the items by (cost, index);
    ``presorted`` says the items already are in that order (costs ascending). Requires
    ``budget > 0`` and at least one item.
    """
    n = costs.size
    if float(costs.sum()) <= budget:  # everything fits: the greedy takes all, nothing to add
        counts = np.bincount(codes, minlength=k).astype(np.float64)
        return np.arange(n, dtype=np.intp), float(costs.sum() + beta * np.sqrt(counts).sum())

    # --- per-cluster lists sorted by (cost, index) ------------------------------------------
    if presorted:
        cl_perm = np.argsort(_small_int(codes, k), kind="stable")  # radix sort
        by_cluster = cl_perm  # (cluster, cost, index)
    else:
        if by_cost is None:
            by_cost = _argsort_ties_by_index(costs)  # (cost, index)
        cl_perm = np.argsort(_small_int(codes, k)[by_cost], kind="stable")  # radix sort
        by_cluster = by_cost[cl_perm]  # (cluster, cost, index); cl_perm = position in by_cost
    sizes = np.bincount(codes, minlength=k)
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    sorted_costs = costs[by_cluster]

    # --- the items the greedy can ever look at (per cluster, a head of its list) -------------
    heads = [
        (int(starts[q]), _eligible_length(sorted_costs[starts[q] : starts[q] + sizes[q]], budget))
        for q in range(k)
        if sizes[q]
    ]
    cand = np.concatenate([by_cluster[lo : lo + ln] for lo, ln in heads])  # item ids
    cost_rank = np.concatenate([cl_perm[lo : lo + ln] for lo, ln in heads])  # (cost, index) rank
    # diversity part of the marginal gain of the j-th item of a cluster, taken with s_k = j
    div_table = beta * sqrt_gain(np.arange(max(ln for _, ln in heads)))
    gd = np.concatenate([div_table[:ln] for _, ln in heads])

    # --- global greedy order by (-density, cost, index) --------------------------------------
    # ``cand`` is in cluster order and each cluster's densities are non-increasing, so the input
    # of the stable sort (timsort) is K sorted runs and the sort is an O(n log K) merge. It breaks
    # ties between clusters by cluster; _fix_ties then restores (cost, index) within tied runs.
    if beta == 0.0:  # all densities equal (zero costs: infinite, and they sort first anyway)
        opos = np.argsort(cost_rank)
    else:
        cc = costs[cand]
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
            neg_key = -(gd / cc)
        neg_key[cc == 0] = -np.inf  # zero cost: infinite density (also when beta * gain underflows)
        opos = np.argsort(neg_key, kind="stable")
        opos = _fix_ties(opos, neg_key[opos], cost_rank)
    order = cand[opos]
    gain_div_ord = gd[opos]
    c_ord = costs[order]
    k_ord = codes[order]

    # --- greedy with skips: each failure closes one cluster, so <= K + 1 passes ------------
    # Windows grow geometrically from each failure, so a pass costs about the distance to the
    # next failure rather than the whole remaining list.
    taken = np.zeros(order.size, dtype=bool)
    is_open = np.ones(k, dtype=bool)
    pos, used, window, total = 0, 0.0, 4096, order.size
    while pos < total:
        end = min(pos + window, total)
        if is_open.all():
            seg = np.arange(pos, end)
        else:
            seg = pos + np.flatnonzero(is_open[k_ord[pos:end]])
        csum = np.cumsum(c_ord[seg])
        csum += used
        f = int(np.searchsorted(csum, budget, side="right"))  # first prefix sum exceeding b
        taken[seg[:f]] = True
        if f:
            used = float(csum[f - 1])
        if f < seg.size:  # a failure closes its cluster; restart just after it
            fail = int(seg[f])
            is_open[k_ord[fail]] = False
            if not is_open.any():
                break
            pos, window = fail + 1, 4096
        else:
            pos, window = end, window * 4
    seq = order[taken]  # greedy sequence in the order items were added
    m = seq.size
    g_pref = np.concatenate(
        ([0.0], np.cumsum(costs[seq] + gain_div_ord[taken]))
    )  # G(G_j), j = 0..m
    c_pref = np.concatenate(([0.0], np.cumsum(costs[seq])))
    remaining = budget - c_pref  # R_j, non-increasing
    best_val, best_j, best_item = float(g_pref[m]), -1, -1

    # --- +Max: best single fitting addition per cluster for every prefix ----------------------
    # An addition to prefix j is worth at most g_pref[j] + min(R_j, c_max) + beta, which is
    # non-decreasing in j; prefixes whose bound cannot beat the final greedy set are skipped.
    c_max = 0.0
    for q in range(k):
        lo, size = int(starts[q]), int(sizes[q])
        if size:
            i = int(np.searchsorted(sorted_costs[lo : lo + size], budget, side="right")) - 1
            if i >= 0:
                c_max = max(c_max, float(sorted_costs[lo + i]))
    bound = g_pref + np.minimum(remaining, c_max) + beta
    live = np.flatnonzero(bound >= best_val - 1e-9 * (1.0 + abs(best_val)))
    j0 = int(live[0]) if live.size else m + 1
    if j0 <= m:
        seq_codes = codes[seq]
        rem_up = remaining[j0:][::-1]  # ascending queries make numpy's binary search faster
        for q in range(k):
            lo, size = int(starts[q]), int(sizes[q])
            if size == 0:
                continue
            s_q = np.concatenate(([0], np.cumsum(seq_codes == q)))[j0:]  # |C_q ∩ G_j|
            ck = sorted_costs[lo : lo + size]
            idx = (np.searchsorted(ck, rem_up, side="right") - 1)[::-1]  # largest cost <= R_j
            ok = idx >= s_q  # must lie in the unselected suffix of the cluster's list
            if not ok.any():
                continue
            idx_ok = np.where(ok, idx, 0)
            val = np.where(ok, g_pref[j0:] + ck[idx_ok] + beta * sqrt_gain(s_q), -np.inf)
            j = val.size - 1 - int(np.argmax(val[::-1]))  # ties: the longest prefix
            if val[j] > best_val:
                best_val, best_j, best_item = float(val[j]), j0 + j, int(by_cluster[lo + idx_ok[j]])

    chosen = np.zeros(n, dtype=bool)  # sorted output by a mask: O(n) instead of a sort
    if best_j < 0:
        chosen[seq] = True
    else:
        chosen[seq[:best_j]] = True
        chosen[best_item] = True
    return np.flatnonzero(chosen), best_val


def _check_order(costs: np.ndarray, order: Any) -> np.ndarray:
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


def _solve(
    costs: Any,
    clusters: Any,
    budget: float,
    beta: float,
    order: Any = None,
    check_order: bool = True,
) -> tuple[np.ndarray, float]:
    c = _as_costs(costs)
    codes, k = _as_codes(clusters, c.size)
    if beta < 0 or not np.isfinite(beta):
        raise ValueError(f"beta must be finite and >= 0, got {beta}")
    budget = float(budget)
    if np.isnan(budget):
        raise ValueError("budget is NaN")
    if order is None:
        by_cost = None
    elif check_order:
        by_cost = _check_order(c, order)
    else:
        by_cost = np.asarray(order, dtype=np.intp)
    if c.size == 0 or budget <= 0:
        return np.zeros(0, dtype=np.intp), 0.0
    return _greedy_max(c, codes, k, budget, float(beta), by_cost)


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
    return _solve(costs, clusters, budget, beta)[0].tolist()


def select_array(
    costs: Any, clusters: Any, budget: float, beta: float, order: Any = None
) -> tuple[np.ndarray, float]:
    """Like :func:`select`, returning ``(sorted index array, G value)`` without a Python list.

    ``order`` optionally gives the permutation that sorts the items by ``(cost, index)``, for
    callers that maintain it incrementally (the plan builder: between stages only the moved
    questions change cost). It is checked in ``O(n)`` and saves the solver's ``O(n log n)`` sort.
    """
    return _solve(costs, clusters, budget, beta, order)


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
    c = _as_costs(costs)
    codes, k = _as_codes(clusters, c.size)
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


def _exact_array(
    costs: Any, clusters: Any, budget: float, beta: float, order: Any = None
) -> tuple[np.ndarray, float]:
    sel = np.asarray(select_exact(costs, clusters, budget, beta), dtype=np.intp)
    return sel, value(costs, clusters, sel, beta) if sel.size else 0.0


def _sorted_greedy_max(
    costs: np.ndarray, codes: np.ndarray, k: int, budget: float, beta: float
) -> tuple[np.ndarray, float]:
    # plan builder: items already in (cost, id) order, dense codes, budget > 0, n >= 1
    return _greedy_max(costs, codes, k, budget, beta, presorted=True)


def _sorted_exact(
    costs: np.ndarray, codes: np.ndarray, k: int, budget: float, beta: float
) -> tuple[np.ndarray, float]:
    return _exact_array(costs, codes, budget, beta)


# Used by the plan builder on items sorted by (cost, id):
# name -> (costs, dense codes, K, budget, beta) -> (sorted positions, G)
SOLVERS: dict[str, Any] = {"greedy_max": _sorted_greedy_max, "exact": _sorted_exact}
