"""Greedy+Max knapsack solver (Eqs. 11–13): feasibility, the ½ guarantee against brute force,
the objective's monotonicity and submodularity, and agreement with a textbook implementation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from kpod.schedulers import greedy_max, knapsack
from kpod.schedulers.knapsack import objective_f, select, select_array, select_exact, value

# Costs mix exact ties, zeros and continuous values; cluster ids need not be dense.
cost_st = st.one_of(
    st.sampled_from([0.0, 0.5, 1.0, 1.0, 2.0, 3.0]),
    st.floats(min_value=0.0, max_value=10.0, allow_nan=False, allow_infinity=False),
)
beta_st = st.one_of(st.sampled_from([0.0, 0.5, 12.0]), st.floats(min_value=0.0, max_value=30.0))


@st.composite
def instances(draw, max_n: int = 14):
    n = draw(st.integers(min_value=0, max_value=max_n))
    costs = draw(st.lists(cost_st, min_size=n, max_size=n))
    clusters = draw(st.lists(st.sampled_from([0, 1, 2, 7, -3]), min_size=n, max_size=n))
    beta = draw(beta_st)
    total = math.fsum(costs)
    budget = draw(st.floats(min_value=1e-3, max_value=total + 1.0))
    return costs, clusters, budget, beta


def fsum_at(costs, idx) -> float:
    return math.fsum(costs[i] for i in idx)


@settings(max_examples=400, deadline=None)
@given(instances())
def test_half_approximation_and_feasibility(inst):
    costs, clusters, budget, beta = inst
    got = select(costs, clusters, budget, beta)
    assert got == sorted(set(got))
    assert all(0 <= i < len(costs) for i in got)
    assert fsum_at(costs, got) <= budget * (1 + 1e-12) + 1e-12
    best = select_exact(costs, clusters, budget, beta)
    assert fsum_at(costs, best) <= budget * (1 + 1e-12) + 1e-12
    g_hat, g_opt = value(costs, clusters, got, beta), value(costs, clusters, best, beta)
    assert g_hat >= 0.5 * g_opt - 1e-9
    assert g_hat <= g_opt + 1e-9  # the brute force really is optimal


@settings(max_examples=150, deadline=None)
@given(instances())
def test_returned_value_matches_objective(inst):
    costs, clusters, budget, beta = inst
    sel, g = select_array(costs, clusters, budget, beta)
    assert g == pytest.approx(value(costs, clusters, sel, beta), abs=1e-9)
    assert objective_f(costs, clusters, sel, beta, budget) == pytest.approx(g - budget, abs=1e-9)


@st.composite
def nested_sets(draw):
    n = draw(st.integers(min_value=1, max_value=12))
    costs = draw(st.lists(cost_st, min_size=n, max_size=n))
    clusters = draw(st.lists(st.integers(0, 3), min_size=n, max_size=n))
    beta = draw(beta_st)
    a_big = draw(st.sets(st.integers(0, n - 1)))
    a_small = draw(st.sets(st.sampled_from(sorted(a_big)))) if a_big else set()
    rest = sorted(set(range(n)) - a_big)
    x = draw(st.sampled_from(rest)) if rest else None
    return costs, clusters, beta, sorted(a_small), sorted(a_big), x


@settings(max_examples=300, deadline=None)
@given(nested_sets())
def test_objective_is_monotone_and_submodular(case):
    costs, clusters, beta, a, a_big, x = case

    def g(s):
        return value(costs, clusters, sorted(s), beta)

    assert value(costs, clusters, [], beta) == 0.0
    assert g(a_big) >= g(a) - 1e-12  # monotone
    if x is not None:  # submodular: G(x | A) >= G(x | A') for A ⊆ A', x ∉ A'
        assert g(a + [x]) - g(a) >= g(a_big + [x]) - g(a_big) - 1e-9


def test_nonpositive_budget_selects_nothing():
    assert select([0.0, 1.0], [0, 1], 0.0, 12.0) == []
    assert select([0.0, 1.0], [0, 1], -5.0, 12.0) == []
    assert select_exact([0.0, 1.0], [0, 1], 0.0, 12.0) == []
    assert select([], [], 3.0, 1.0) == []


def test_everything_fits():
    costs = [0.5, 1.5, 0.0, 2.0]
    assert select(costs, [0, 0, 1, 2], 4.0, 12.0) == [0, 1, 2, 3]
    assert select(costs, [0, 0, 1, 2], 100.0, 0.0) == [0, 1, 2, 3]


def test_plus_max_phase_matters_for_beta_zero():
    # Greedy (all densities equal, ties by cost) takes 1 + 1 and cannot add 10; the "+Max"
    # augmentation of the empty prefix takes the single item of cost 10 = the optimum.
    assert select([1.0, 1.0, 10.0], [0, 0, 0], 10.0, 0.0) == [2]


def test_plus_max_beats_greedy_plus_singleton():
    # Greedy takes 0.9, 3.1, 3.3 (7.3) and then 8.6 no longer fits: G = 9.71; the best single
    # item is 8.6 (G = 9.6). Greedy+Max tries 8.6 next to the prefix {0.9, 3.1}: G = 15.01.
    # The optimum {3.1, 3.3, 8.6} has G = 17.41, so Greedy+Singleton gets only 0.56 of it.
    costs, clusters, budget, beta = [3.1, 0.9, 3.3, 8.6], [0, 2, 2, 0], 15.7, 1.0
    assert select(costs, clusters, budget, beta) == [0, 1, 3]
    greedy_or_single = max(
        value(costs, clusters, [0, 1, 2], beta), value(costs, clusters, [3], beta)
    )
    assert greedy_or_single == pytest.approx(9.7142, abs=1e-4)
    assert value(costs, clusters, [0, 1, 3], beta) == pytest.approx(15.0142, abs=1e-4)
    assert select_exact(costs, clusters, budget, beta) == [0, 2, 3]


def test_beta_zero_is_subset_sum_like():
    costs = [3.0, 4.0, 5.0, 6.0]
    got = select(costs, [0, 1, 0, 1], 10.0, 0.0)
    assert fsum_at(costs, got) <= 10.0
    assert fsum_at(costs, got) >= 5.0  # ½ of the optimum 10 (4 + 6)


def test_diversity_prefers_spread_over_one_cluster():
    # Equal costs: beta > 0 spreads the picks over the clusters, beta = 0 takes by index.
    costs = [1.0] * 8
    clusters = [0, 0, 0, 0, 0, 0, 1, 1]
    assert select(costs, clusters, 2.0, 0.0) == [0, 1]
    assert select(costs, clusters, 2.0, 12.0) == [0, 6]


def test_zero_cost_items_are_always_taken():
    rng = np.random.default_rng(3)
    for _ in range(200):
        n = int(rng.integers(1, 30))
        costs = np.where(rng.random(n) < 0.3, 0.0, rng.random(n) * 3)
        clusters = rng.integers(0, 3, n)
        beta = float(rng.choice([0.0, 1.0, 12.0]))
        got = set(select(costs, clusters, float(rng.random() * 4 + 1e-3), beta))
        assert set(np.flatnonzero(costs == 0).tolist()) <= got


def test_input_validation():
    with pytest.raises(ValueError):
        select([1.0, -1.0], [0, 0], 1.0, 1.0)
    with pytest.raises(ValueError):
        select([1.0, float("nan")], [0, 0], 1.0, 1.0)
    with pytest.raises(ValueError):
        select([1.0], [0, 1], 1.0, 1.0)
    with pytest.raises(ValueError):
        select([1.0], [0.5], 1.0, 1.0)
    with pytest.raises(ValueError):
        select([1.0], [0], 1.0, -1.0)
    with pytest.raises(ValueError):
        select_exact([1.0] * 21, [0] * 21, 1.0, 1.0)


# --- agreement with a textbook Greedy+Max -------------------------------------------------------
def textbook_greedy_max(costs, clusters, budget, beta):
    """Greedy+Max straight from its definition, on a generic set function, O(n^2)."""
    n = len(costs)

    def g(s):
        return value(costs, clusters, sorted(s), beta)

    def fits(s, i):
        return math.fsum([*(costs[j] for j in s), costs[i]]) <= budget  # exact: no rounding at the edge

    def best_addition(s):
        opts = [(g(s | {i}), i) for i in range(n) if i not in s and fits(s, i)]
        return max(opts)[0] if opts else g(s)

    s: set[int] = set()
    best = best_addition(s)
    while True:
        options = []
        for i in range(n):
            if i in s or not fits(s, i):
                continue
            # marginal density 1 + beta (sqrt(s_k + 1) - sqrt(s_k)) / c_i, from the closed form so
            # that exact ties (e.g. beta = 0: all densities 1) are not broken by rounding noise
            s_k = sum(1 for j in s if clusters[j] == clusters[i])
            div = beta * (math.sqrt(s_k + 1) - math.sqrt(s_k))
            density = math.inf if costs[i] == 0 else div / costs[i]
            options.append((-density, costs[i], i))
        if not options:
            break
        s.add(min(options)[2])
        best = max(best, best_addition(s))
    return max(best, g(s))


@settings(max_examples=200, deadline=None)
@given(instances(max_n=12))
def test_matches_textbook_greedy_max_value(inst):
    costs, clusters, budget, beta = inst
    assume(budget > 0)
    got = value(costs, clusters, select(costs, clusters, budget, beta), beta)
    assert got == pytest.approx(
        textbook_greedy_max(costs, clusters, budget, beta), rel=1e-9, abs=1e-9
    )


# --- the fast paths ---------------------------------------------------------------------------
def test_packed_argsort_equals_lexsort():
    rng = np.random.default_rng(0)
    gens = [
        lambda n: rng.lognormal(0, 1, n),
        lambda n: np.round(rng.random(n) * 10, 1),  # many exact ties
        lambda n: rng.random(n) * 1e-300,  # subnormal-ish scale
        lambda n: np.where(rng.random(n) < 0.3, 0.0, rng.random(n)),
        lambda n: 1.0 + rng.integers(0, 3, n) * 2.2e-16,  # differ only in the lowest bits
        lambda n: np.tile([0.0, -0.0, 1.0], n // 3 + 1)[:n],
    ]
    for i, gen in enumerate(gens * 2):
        n = int(rng.integers(4096, 40000)) if i < len(gens) else int(rng.integers(2, 200))
        x = gen(n)
        ref = np.lexsort((np.arange(n), x + 0.0))
        assert np.array_equal(greedy_max.argsort_ties_by_index(x), ref), i


def test_order_hint_and_presorted_paths_agree():
    rng = np.random.default_rng(1)
    for trial in range(40):
        n = int(rng.integers(1, 6000))
        costs = rng.lognormal(0, 1, n) if trial % 2 else np.round(rng.random(n) * 4, 1)
        clusters = rng.integers(0, 5, n)
        beta = float(rng.choice([0.0, 0.7, 12.0]))
        budget = float(costs.sum() * rng.choice([0.01, 0.2, 0.7]) + 1e-6)
        plain, g_plain = select_array(costs, clusters, budget, beta)
        order = np.lexsort((np.arange(n), costs))
        hinted, g_hint = select_array(costs, clusters, budget, beta, order=order)
        assert np.array_equal(plain, hinted) and g_plain == g_hint
        # items permuted into (cost, index) order: the plan builder's sorted path
        codes, k = knapsack.as_codes(clusters, n)
        pos, g_sorted = knapsack.SOLVERS["greedy_max"](costs[order], codes[order], k, budget, beta)
        assert np.array_equal(np.sort(order[pos]), plain)
        assert g_sorted == pytest.approx(g_plain, rel=1e-12)


def test_bad_order_hint_is_rejected():
    with pytest.raises(ValueError):
        select_array([2.0, 1.0], [0, 0], 1.0, 1.0, order=[0, 1])
    with pytest.raises(ValueError):
        select_array([1.0, 1.0], [0, 0], 1.0, 1.0, order=[1, 0])  # ties must go by index
    with pytest.raises(ValueError):
        select_array([1.0, 2.0], [0, 0], 1.0, 1.0, order=[0, 0])


def test_large_instance_is_feasible_and_beats_half_of_a_bound():
    rng = np.random.default_rng(2)
    n = 200_000
    costs = rng.lognormal(0, 1, n)
    clusters = rng.integers(0, 5, n)
    budget = float(costs.sum() * 0.05)
    sel, g = select_array(costs, clusters, budget, 12.0)
    assert costs[sel].sum() <= budget * (1 + 1e-12)
    # OPT <= budget + beta * sum_k sqrt(n_k) (costs are capped by the budget, each cluster by its size)
    upper = budget + 12.0 * np.sqrt(np.bincount(clusters)).sum()
    assert g >= 0.5 * upper
    assert costs[sel].sum() >= budget - costs.max() - 12.0  # filled up to about one item
