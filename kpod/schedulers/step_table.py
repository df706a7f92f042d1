"""Array state of the KPOD plan builder (:func:`kpod.schedulers.kpod_knapsack.build_plan`).

:class:`StepTable` holds every question's step difficulties as flat arrays with exact suffix
sums (Eq. 9 and move costs in ``O(1)`` numpy work per question); :class:`SortedCandidates` keeps
the knapsack candidates sorted by (move cost, question id) between stages.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

from kpod.schedulers import greedy_max

__all__ = ["SortedCandidates", "StepTable", "stage_dtype"]


class StepTable:
    """Per-question step difficulties as flat arrays with exact per-question suffix sums.

    ``suffix[slot[i] + c] = sum(diffs[i][c:])`` for ``c = 0..n_i`` (summed from the last step,
    per question, so large datasets do not lose precision to a global cumulative sum).
    """

    def __init__(self, diffs: Sequence[Sequence[float]]) -> None:
        n = len(diffs)
        self.lengths = np.fromiter(map(len, diffs), dtype=np.int64, count=n)
        total = int(self.lengths.sum())
        self.values = np.fromiter(
            itertools.chain.from_iterable(diffs), dtype=np.float64, count=total
        )
        if total and not (np.isfinite(self.values).all() and (self.values >= 0).all()):
            raise ValueError("step difficulties must be finite and non-negative")
        self.starts = (
            np.concatenate(([0], np.cumsum(self.lengths)[:-1])).astype(np.int64)
            if n
            else np.zeros(0, np.int64)
        )
        self.slot = self.starts + np.arange(n, dtype=np.int64)  # each question owns n_i + 1 slots
        self.suffix = np.zeros(total + n)
        # Column by column from the last step: suffix[c] = suffix[c + 1] + d[c]. The active set
        # shrinks as short questions finish and stays in id order (streaming memory access).
        ids = np.flatnonzero(self.lengths > 0)
        r = 1
        while ids.size:
            back = self.lengths[ids] - r  # step index c = n_i - r
            at = self.slot[ids] + back
            self.suffix[at] = self.suffix[at + 1] + self.values[self.starts[ids] + back]
            r += 1
            ids = ids[self.lengths[ids] >= r]

    def __len__(self) -> int:
        return int(self.lengths.size)

    def output_difficulties(self, c: np.ndarray, ids: np.ndarray | None = None) -> np.ndarray:
        """Eq. 9 for every question (or the questions ``ids``): ``h_i = sum(diffs[i][c_i:])``."""
        slot = self.slot if ids is None else self.slot[ids]
        ci = c if ids is None else c[ids]
        return self.suffix[slot + ci.astype(np.int64, copy=False)]

    def move_costs(self, c: np.ndarray, ids: np.ndarray, delta_s: int) -> np.ndarray:
        """Cost of moving ``delta_s`` steps to the output: ``sum(diffs[i][max(c_i-Δs, 0):c_i])``.

        Summed left to right like Python's ``sum`` (one vectorised pass per moved step), so the
        costs equal the reference builder's bit for bit.
        """
        ci = c[ids].astype(np.int64)
        base = self.starts[ids]
        cost = np.zeros(ids.size)
        for q in range(min(delta_s, int(ci.max()) if ci.size else 0), 0, -1):  # steps c-q .. c-1
            j = ci - q
            ok = j >= 0
            cost += np.where(ok, self.values[base + np.where(ok, j, 0)], 0.0)
        return cost


def stage_dtype(max_len: int) -> type:
    """The narrowest unsigned integer type holding step counts up to ``max_len``."""
    for dt in (np.uint8, np.uint16, np.uint32):
        if max_len <= np.iinfo(dt).max:
            return dt
    return np.int64


class SortedCandidates:
    """Candidate questions (``c >= 1``) kept sorted by (move cost, question id).

    Between stages only the moved questions change cost, so the next order is a linear merge
    (timsort over two sorted runs) of the unmoved candidates with the small sorted list of the
    moved ones' new costs. The solver then works on sorted, contiguous arrays: no per-stage sort
    of all candidates and few random memory accesses. Because positions in this order rank the
    items by (cost, id), the solver's tie rule (density, then cost, then index) on positions is
    exactly its rule (density, then cost, then question id) on the original items.
    """

    def __init__(self, table: StepTable, c: np.ndarray, codes: np.ndarray, delta_s: int) -> None:
        self.table, self.delta_s = table, delta_s
        ids = np.flatnonzero(c >= 1)
        cost = table.move_costs(c, ids, delta_s)
        perm = greedy_max.argsort_ties_by_index(cost)  # ids ascending: ties go by id
        self.ids, self.cost, self.codes = ids[perm], cost[perm], codes[ids[perm]]

    def __len__(self) -> int:
        return int(self.ids.size)

    def advance(self, sel: np.ndarray, c: np.ndarray, all_codes: np.ndarray) -> None:
        """Drop the selected positions ``sel``; re-insert those still candidates at new costs."""
        keep = np.ones(self.ids.size, dtype=bool)
        keep[sel] = False
        moved = np.sort(self.ids[sel])  # by id, so that the sort below breaks ties by id
        new = moved[c[moved] >= 1]
        new_cost = self.table.move_costs(c, new, self.delta_s)
        perm = greedy_max.argsort_ties_by_index(new_cost)
        ids = np.concatenate((self.ids[keep], new[perm]))
        cost = np.concatenate((self.cost[keep], new_cost[perm]))
        codes = np.concatenate((self.codes[keep], all_codes[new[perm]]))
        order = np.argsort(cost, kind="stable")  # timsort on two sorted runs: a linear merge
        order = greedy_max.fix_ties(order, cost[order], ids)  # ties across the runs: by id
        self.ids, self.cost, self.codes = ids[order], cost[order], codes[order]
