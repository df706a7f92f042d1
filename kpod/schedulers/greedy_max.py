"""Greedy+Max for the KPOD knapsack (:mod:`kpod.schedulers.knapsack`), vectorised with numpy,
and the (cost, index) orderings it and the plan builder share.

Specialisation to ``G`` (Eq. 12's diversity-aware objective). The marginal gain of ``x`` in cluster ``k`` with ``s_k``
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
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np


def sqrt_gain(s: np.ndarray | int) -> np.ndarray:
    """``sqrt(s + 1) - sqrt(s)`` computed as ``1 / (sqrt(s + 1) + sqrt(s))`` (monotone in float)."""
    s = np.asarray(s, dtype=np.float64)
    return 1.0 / (np.sqrt(s + 1.0) + np.sqrt(s))


def small_int(codes: np.ndarray, k: int) -> np.ndarray:
    """Narrow dtype so numpy's stable sort uses radix sort."""
    if codes.dtype in (np.uint8, np.uint16):
        return codes
    if k <= 256:
        return codes.astype(np.uint8)
    if k <= 65536:
        return codes.astype(np.uint16)
    return codes


def fix_ties(
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


def argsort_ties_by_index(values: np.ndarray) -> np.ndarray:
    """Argsort of non-negative floats ascending, ties by index.

    For large inputs the index is packed into the low mantissa bits of each value's IEEE bit
    pattern (monotone for non-negative floats) and the packed integers are sorted, which is
    about 1.5x faster than numpy's argsort; runs whose truncated values collide are then
    re-sorted exactly by (value, index). Small inputs use argsort plus :func:`fix_ties`.
    """
    n = values.size
    if n < 4096 or n >= 1 << 40:
        perm = np.argsort(values)
        return fix_ties(perm, values[perm])
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


def eligible_length(ck: np.ndarray, budget: float) -> int:
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


class _ClusterLists(NamedTuple):
    """The items as per-cluster lists, each sorted by (cost, index), laid end to end."""

    by_cluster: np.ndarray  # item ids in (cluster, cost, index) order
    cost_rank: np.ndarray  # each entry's rank in the global (cost, index) order
    starts: np.ndarray  # where each cluster's list begins
    sizes: np.ndarray  # its length
    sorted_costs: np.ndarray  # costs[by_cluster]


def _cluster_lists(
    costs: np.ndarray, codes: np.ndarray, k: int, by_cost: np.ndarray | None, presorted: bool
) -> _ClusterLists:
    if presorted:
        cl_perm = np.argsort(small_int(codes, k), kind="stable")  # radix sort
        by_cluster = cl_perm  # (cluster, cost, index)
    else:
        if by_cost is None:
            by_cost = argsort_ties_by_index(costs)  # (cost, index)
        cl_perm = np.argsort(small_int(codes, k)[by_cost], kind="stable")  # radix sort
        by_cluster = by_cost[cl_perm]  # (cluster, cost, index); cl_perm = position in by_cost
    sizes = np.bincount(codes, minlength=k)
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    return _ClusterLists(by_cluster, cl_perm, starts, sizes, costs[by_cluster])


def _greedy_order(
    costs: np.ndarray, lists: _ClusterLists, k: int, budget: float, beta: float
) -> tuple[np.ndarray, np.ndarray]:
    """The items the greedy can ever look at, in its order ``(-density, cost, index)``, and the
    diversity part of each one's marginal gain (the ``j``-th item of a cluster enters with
    ``s_k = j``)."""
    by_cluster, cl_perm, starts, sizes, sorted_costs = lists
    # per cluster, a head of its list
    heads = [
        (int(starts[q]), eligible_length(sorted_costs[starts[q] : starts[q] + sizes[q]], budget))
        for q in range(k)
        if sizes[q]
    ]
    cand = np.concatenate([by_cluster[lo : lo + ln] for lo, ln in heads])  # item ids
    cost_rank = np.concatenate([cl_perm[lo : lo + ln] for lo, ln in heads])  # (cost, index) rank
    div_table = beta * sqrt_gain(np.arange(max(ln for _, ln in heads)))
    gd = np.concatenate([div_table[:ln] for _, ln in heads])

    # ``cand`` is in cluster order and each cluster's densities are non-increasing, so the input
    # of the stable sort (timsort) is K sorted runs and the sort is an O(n log K) merge. It breaks
    # ties between clusters by cluster; fix_ties then restores (cost, index) within tied runs.
    if beta == 0.0:  # all densities equal (zero costs: infinite, and they sort first anyway)
        opos = np.argsort(cost_rank)
    else:
        cc = costs[cand]
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
            neg_key = -(gd / cc)
        neg_key[cc == 0] = -np.inf  # zero cost: infinite density (also when beta * gain underflows)
        opos = np.argsort(neg_key, kind="stable")
        opos = fix_ties(opos, neg_key[opos], cost_rank)
    return cand[opos], gd[opos]


def _greedy_with_skips(c_ord: np.ndarray, k_ord: np.ndarray, k: int, budget: float) -> np.ndarray:
    """Mask of the items the greedy takes, given their costs and clusters in greedy order.

    Each failure closes one cluster, so <= K + 1 passes. Windows grow geometrically from each
    failure, so a pass costs about the distance to the next failure rather than the whole
    remaining list."""
    taken = np.zeros(c_ord.size, dtype=bool)
    is_open = np.ones(k, dtype=bool)
    pos, used, window, total = 0, 0.0, 4096, c_ord.size
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
    return taken


def _largest_fitting_cost(lists: _ClusterLists, k: int, budget: float) -> float:
    """The largest single cost ``<= budget`` (0.0 if none)."""
    c_max = 0.0
    for q in range(k):
        lo, size = int(lists.starts[q]), int(lists.sizes[q])
        if size:
            i = int(np.searchsorted(lists.sorted_costs[lo : lo + size], budget, side="right")) - 1
            if i >= 0:
                c_max = max(c_max, float(lists.sorted_costs[lo + i]))
    return c_max


def _best_addition(
    lists: _ClusterLists,
    codes: np.ndarray,
    k: int,
    seq: np.ndarray,
    g_pref: np.ndarray,
    remaining: np.ndarray,
    budget: float,
    beta: float,
) -> tuple[float, int, int]:
    """+Max: the best single fitting addition per cluster for every greedy prefix.

    Returns ``(best value, prefix length j, added item)``, or ``(G of the greedy set, -1, -1)``
    when no addition beats it. An addition to prefix ``j`` is worth at most
    ``g_pref[j] + min(R_j, c_max) + beta``, which is non-decreasing in ``j``; prefixes whose
    bound cannot beat the final greedy set are skipped."""
    m = seq.size
    best_val, best_j, best_item = float(g_pref[m]), -1, -1
    bound = g_pref + np.minimum(remaining, _largest_fitting_cost(lists, k, budget)) + beta
    live = np.flatnonzero(bound >= best_val - 1e-9 * (1.0 + abs(best_val)))
    j0 = int(live[0]) if live.size else m + 1
    if j0 > m:
        return best_val, best_j, best_item
    seq_codes = codes[seq]
    rem_up = remaining[j0:][::-1]  # ascending queries make numpy's binary search faster
    for q in range(k):
        lo, size = int(lists.starts[q]), int(lists.sizes[q])
        if size == 0:
            continue
        s_q = np.concatenate(([0], np.cumsum(seq_codes == q)))[j0:]  # |C_q ∩ G_j|
        ck = lists.sorted_costs[lo : lo + size]
        idx = (np.searchsorted(ck, rem_up, side="right") - 1)[::-1]  # largest cost <= R_j
        ok = idx >= s_q  # must lie in the unselected suffix of the cluster's list
        if not ok.any():
            continue
        idx_ok = np.where(ok, idx, 0)
        val = np.where(ok, g_pref[j0:] + ck[idx_ok] + beta * sqrt_gain(s_q), -np.inf)
        j = val.size - 1 - int(np.argmax(val[::-1]))  # ties: the longest prefix
        if val[j] > best_val:
            best_val, best_j, best_item = float(val[j]), j0 + j, int(lists.by_cluster[lo + idx_ok[j]])
    return best_val, best_j, best_item


def greedy_max(
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
    # everything fits: the greedy takes all, nothing to add. Summed exactly (fsum): a budget that
    # equals the total must not be missed by the rounding of one summation order
    if math.fsum(costs.tolist()) <= budget:
        counts = np.bincount(codes, minlength=k).astype(np.float64)
        return np.arange(n, dtype=np.intp), float(costs.sum() + beta * np.sqrt(counts).sum())

    lists = _cluster_lists(costs, codes, k, by_cost, presorted)
    order, gain_div_ord = _greedy_order(costs, lists, k, budget, beta)
    taken = _greedy_with_skips(costs[order], codes[order], k, budget)
    seq = order[taken]  # greedy sequence in the order items were added
    g_pref = np.concatenate(
        ([0.0], np.cumsum(costs[seq] + gain_div_ord[taken]))
    )  # G(G_j), j = 0..m
    c_pref = np.concatenate(([0.0], np.cumsum(costs[seq])))
    remaining = budget - c_pref  # R_j, non-increasing
    best_val, best_j, best_item = _best_addition(lists, codes, k, seq, g_pref, remaining, budget, beta)

    chosen = np.zeros(n, dtype=bool)  # sorted output by a mask: O(n) instead of a sort
    if best_j < 0:
        chosen[seq] = True
    else:
        chosen[seq[:best_j]] = True
        chosen[best_item] = True
    return np.flatnonzero(chosen), best_val
