"""In-rationale schedulers: kpod_knapsack (Algorithm 1), linear, anti_curriculum."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from kpod.registry import SCHEDULERS
from kpod.schedulers import knapsack
from kpod.schedulers.base import CurriculumPlan, ScheduleInputs
from kpod.schedulers.kpod_knapsack import StepTable, budget_curve, build_plan, output_difficulty
from kpod.schedulers.simple import linear_given_steps


def make(name: str, **params):
    cls = SCHEDULERS.get(name)
    return cls(cls.Params(**params))


def inputs_from(
    diffs: dict[str, list[float]], clusters: dict[str, int], num_epochs: int = 10, seed: int = 0
):
    return ScheduleInputs(
        n_steps={k: len(v) for k, v in diffs.items()},
        num_epochs=num_epochs,
        seed=seed,
        difficulties=diffs,
        clusters=clusters,
    )


def random_data(seed: int, n: int = 60, max_steps: int = 7, dyadic: bool = False, k: int = 4):
    rng = random.Random(seed)
    diffs, clusters = {}, {}
    for i in range(n):
        steps = rng.randint(1, max_steps)
        if dyadic:
            diffs[f"q{i:04d}"] = [rng.randint(0, 24) / 8 for _ in range(steps)]
        else:
            diffs[f"q{i:04d}"] = [rng.lognormvariate(0, 1) for _ in range(steps)]
        clusters[f"q{i:04d}"] = rng.randrange(k)
    return diffs, clusters


def h_total(diffs: dict[str, list[float]], stage: dict[str, int]) -> float:
    return math.fsum(output_difficulty(diffs[s], c) for s, c in stage.items())


# --- Eq. 9, Eq. 10 ------------------------------------------------------------------------------
def test_eq9_indexing_spec_example():
    d = (1.0, 0.5, 2.0)
    assert output_difficulty(d, 2) == 2.0  # only step 3 is output
    assert output_difficulty(d, 0) == 3.5
    assert output_difficulty(d, 1) == 2.5
    assert output_difficulty(d, 3) == 0.0
    table = StepTable([list(d)])
    for c in range(4):
        assert table.output_difficulties(np.array([c]))[0] == output_difficulty(d, c)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.lists(st.floats(0, 10, allow_nan=False), min_size=0, max_size=9), min_size=1, max_size=30
    ),
    st.data(),
)
def test_vectorised_eq9_and_move_costs(diffs, data):
    table = StepTable(diffs)
    c = np.array([data.draw(st.integers(0, len(d))) for d in diffs])
    h = table.output_difficulties(c)
    for i, d in enumerate(diffs):
        assert h[i] == pytest.approx(sum(d[c[i] :]), rel=1e-12, abs=1e-12)
    ids = np.flatnonzero(c >= 1)
    for ds in (1, 2, 5):
        costs = table.move_costs(c, ids, ds)
        for j, i in enumerate(ids):  # bit for bit like Python's sum
            assert costs[j] == sum(diffs[i][max(c[i] - ds, 0) : c[i]])


def test_budget_curve_endpoints_and_table():
    B, C0, T = 1234.5, 0.3 * 1234.5, 20
    assert budget_curve(0, T, B, C0, 0.5) == C0
    assert budget_curve(T, T, B, C0, 0.5) == B
    table = [0.300, 0.322, 0.363, 0.415, 0.477, 0.547, 0.625, 0.710, 0.801, 0.898, 1.000]
    for j, want in enumerate(table):
        assert budget_curve(j / 10 * T, T, 1.0, 0.3, 0.5) == pytest.approx(want, abs=1e-3)
    ts = np.arange(T + 1)
    vals = [budget_curve(t, T, B, C0, 1.5) for t in ts]
    assert all(a <= b for a, b in zip(vals, vals[1:]))  # grows


# --- plan semantics -------------------------------------------------------------------------------
def check_plan_semantics(diffs, clusters, plan: CurriculumPlan, delta_s: int, T: int):
    info = plan.info
    assert len(plan.stages) == T
    init = {s: max(len(d) - 1, 0) for s, d in diffs.items()}
    prev = init
    B, C0 = info["B"], info["C0"]
    assert B == pytest.approx(math.fsum(map(math.fsum, diffs.values())))
    tol = 1e-9 * max(1.0, B)
    for t, stage in enumerate(plan.stages):
        assert set(stage) == set(diffs)
        rec = info["stages"][t]
        moved = 0
        per_cluster: dict[str, int] = {}
        for s, c in stage.items():
            assert 0 <= c <= prev[s]  # never increases, never negative
            assert prev[s] - c <= delta_s  # at most one move of delta_s per stage
            if prev[s] != c:
                assert c == max(prev[s] - delta_s, 0)
                moved += 1
                per_cluster[str(clusters[s])] = per_cluster.get(str(clusters[s]), 0) + 1
            if len(diffs[s]) <= 1:
                assert c == 0  # single-step questions output their step
        assert rec["selected"] == moved
        assert {k: v for k, v in rec["selected_per_cluster"].items() if v} == per_cluster
        h = h_total(diffs, stage)
        assert rec["achieved_H"] == pytest.approx(h, rel=1e-12, abs=1e-12)
        assert rec["target_D"] == pytest.approx(
            C0 if t == 0 else budget_curve(t, T, B, C0, info["params"]["p"])
        )
        if rec["allowance"] > 0:
            assert h <= rec["target_D"] + tol  # the knapsack constraint
        else:
            assert moved == 0  # non-positive allowance selects nothing
        assert rec["F"] == pytest.approx(rec["G"] - rec["allowance"])
        if t == 0:
            h_init = h_total(diffs, init)
            assert info["H_init"] == pytest.approx(h_init)
            assert h >= h_init - tol  # the top-up only adds
            assert rec["allowance"] == pytest.approx(C0 - h_init)
        prev = stage


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("delta_s", [1, 2])
def test_plan_semantics(seed, delta_s):
    diffs, clusters = random_data(seed, dyadic=seed % 2 == 0)
    T = 3 + seed
    plan = make("kpod_knapsack", T=T, delta_s=delta_s, beta=[12.0, 0.0, 3.0][seed % 3]).plan(
        inputs_from(diffs, clusters)
    )
    check_plan_semantics(diffs, clusters, plan, delta_s, T)
    # past the last stage everything trains on the full rationale
    for s in diffs:
        assert plan.given_steps(T + 1, s) == 0
        assert plan.given_steps(T + 5, s) == 0
        assert plan.given_steps(1, s) == plan.stages[0][s]


def test_top_up_fills_to_c0_and_g_matches_objective():
    diffs, clusters = random_data(11, n=80)
    plan = make("kpod_knapsack", T=5).plan(inputs_from(diffs, clusters))
    rec = plan.info["stages"][0]
    assert plan.info["H_init"] < plan.info["C0"]  # with c0_frac = 0.3 the last steps are below C0
    assert rec["selected"] > 0
    assert rec["achieved_H"] <= plan.info["C0"] + 1e-9
    # G is the objective of the selected moves (costs = difficulty of the step that moved)
    ids = sorted(diffs)
    init = [len(diffs[s]) - 1 for s in ids]
    cand = [i for i, c in enumerate(init) if c >= 1]
    costs = [diffs[ids[i]][init[i] - 1] for i in cand]
    sel = [j for j, i in enumerate(cand) if plan.stages[0][ids[i]] != init[i]]
    assert rec["G"] == pytest.approx(
        knapsack.value(costs, [clusters[ids[i]] for i in cand], sel, 12.0)
    )


# --- Algorithm 1, transcribed stage by stage --------------------------------------------------
def reference_plan(diffs, cluster, T, c0_frac=0.3, p=0.5, beta=12.0, ds=1):
    B = sum(map(sum, diffs))
    C0 = c0_frac * B

    def D(t):
        return C0 + (B - C0) * (t / T) ** (p + 1)

    def H(c):
        return sum(sum(d[ci:]) for d, ci in zip(diffs, c))

    def advance(c, budget):
        cost = {i: sum(diffs[i][max(ci - ds, 0) : ci]) for i, ci in enumerate(c) if ci > 0}
        keys = sorted(cost)
        S = set()
        if budget > 0:
            picked = knapsack.select(
                [cost[i] for i in keys], [cluster[i] for i in keys], budget, beta
            )
            S = {keys[j] for j in picked}
        return [max(ci - ds, 0) if i in S else ci for i, ci in enumerate(c)]

    c = [len(d) - 1 for d in diffs]
    plan = [advance(c, C0 - H(c))]
    for t in range(1, T):
        plan.append(advance(plan[-1], D(t) - H(plan[-1])))
    return plan


@pytest.mark.parametrize("seed", range(25))
def test_matches_reference_builder(seed):
    rng = random.Random(seed)
    n = rng.randint(1, 50)
    # dyadic difficulties: every sum is exact, so the comparison is bit for bit
    diffs = [[rng.randint(0, 16) / 8 for _ in range(rng.randint(1, 6))] for _ in range(n)]
    cl = [rng.randint(0, 3) for _ in range(n)]
    T, beta, ds = rng.randint(1, 8), rng.choice([0.0, 1.0, 12.0]), rng.randint(1, 3)
    got, _ = build_plan(diffs, cl, T, beta=beta, delta_s=ds)
    assert got == reference_plan(diffs, cl, T, beta=beta, ds=ds)


def test_matches_reference_builder_at_scale():
    # > 4096 candidates: exercises the packed sort and the incremental (cost, id) order
    rng = random.Random(5)
    n = 6000
    diffs = [[rng.randint(0, 40) / 8 for _ in range(rng.randint(1, 5))] for _ in range(n)]
    cl = [rng.randint(0, 4) for _ in range(n)]
    got, _ = build_plan(diffs, cl, 5, beta=12.0)
    assert got == reference_plan(diffs, cl, 5, beta=12.0)
    got, _ = build_plan(diffs, cl, 4, beta=0.0, delta_s=2)
    assert got == reference_plan(diffs, cl, 4, beta=0.0, ds=2)


# --- determinism, purity, round trips -------------------------------------------------------------
def test_deterministic_and_order_independent():
    diffs, clusters = random_data(3, n=120)
    a = make("kpod_knapsack", T=6).plan(inputs_from(diffs, clusters, seed=0))
    b = make("kpod_knapsack", T=6).plan(inputs_from(diffs, clusters, seed=0))
    keys = list(diffs)
    random.Random(9).shuffle(keys)
    shuffled = inputs_from(
        {k: diffs[k] for k in keys}, {k: clusters[k] for k in reversed(keys)}, seed=123
    )
    c = make("kpod_knapsack", T=6).plan(shuffled)
    assert a.to_json() == b.to_json() == c.to_json()


def test_resume_reads_the_same_stage_and_json_round_trips():
    diffs, clusters = random_data(4, n=50)
    sched = make("kpod_knapsack", T=7)
    full = sched.plan(inputs_from(diffs, clusters, num_epochs=14))
    again = make("kpod_knapsack", T=7).plan(inputs_from(diffs, clusters, num_epochs=14))
    for t in range(7):  # a resumed run rebuilds the plan and reads stage t: same assignment
        assert again.stages[t] == full.stages[t]
    text = json.dumps(full.to_json(), allow_nan=False)
    back = CurriculumPlan.from_json(json.loads(text))
    assert back.stages == full.stages
    assert back.info == full.info
    for e in range(1, 10):
        for s in diffs:
            assert back.given_steps(e, s) == full.given_steps(e, s)


# --- params and variants --------------------------------------------------------------------------
def test_default_T_is_half_the_epochs_and_params_are_strict():
    diffs, clusters = random_data(1, n=20)
    assert len(make("kpod_knapsack").plan(inputs_from(diffs, clusters, num_epochs=7)).stages) == 3
    assert len(make("kpod_knapsack").plan(inputs_from(diffs, clusters, num_epochs=1)).stages) == 1
    assert len(make("linear").plan(inputs_from(diffs, clusters, num_epochs=10)).stages) == 5
    cls = SCHEDULERS.get("kpod_knapsack")
    with pytest.raises(ValidationError):
        cls.Params(bogus=1)
    with pytest.raises(ValidationError):
        cls.Params(stage_offset=2)
    with pytest.raises(ValidationError):
        cls.Params(init="first")
    with pytest.raises(ValidationError):
        SCHEDULERS.get("linear").Params(beta=1.0)
    for name in ("kpod_knapsack", "anti_curriculum"):
        fields = SCHEDULERS.get(name).Params.model_fields
        assert all(f.description for f in fields.values())


def test_registry_and_needs():
    assert {"none", "kpod_knapsack", "linear", "anti_curriculum"} <= set(SCHEDULERS.names())
    assert SCHEDULERS.get("kpod_knapsack").needs == frozenset({"difficulty", "clusters"})
    assert SCHEDULERS.get("anti_curriculum").needs == frozenset({"difficulty", "clusters"})
    assert SCHEDULERS.get("linear").needs == frozenset()


def test_missing_or_inconsistent_difficulties_are_errors():
    diffs, clusters = random_data(2, n=5)
    ins = inputs_from(diffs, clusters)
    with pytest.raises(ValueError, match="needs"):
        make("kpod_knapsack").plan(ScheduleInputs(n_steps=ins.n_steps, num_epochs=4, seed=0))
    bad = dict(ins.n_steps)
    bad[next(iter(bad))] += 1
    with pytest.raises(ValueError, match="difficulties"):
        make("kpod_knapsack").plan(ScheduleInputs(bad, 4, 0, diffs, clusters))
    with pytest.raises(ValueError):
        build_plan([[1.0, -0.5]], [0], 2)


def test_stage_offset_one_shifts_by_one_stage():
    diffs, clusters = random_data(6, n=70)
    T = 6
    p0 = make("kpod_knapsack", T=T).plan(inputs_from(diffs, clusters))
    p1 = make("kpod_knapsack", T=T, stage_offset=1).plan(inputs_from(diffs, clusters))
    assert len(p1.stages) == T
    assert p1.stages[: T - 1] == p0.stages[1:]  # epoch e uses stage e instead of stage e - 1
    last = p1.info["stages"][-1]
    assert last["stage"] == T and last["target_D"] == pytest.approx(p1.info["B"])
    assert p1.info["stages"][0]["epoch"] is None and p0.info["stages"][0]["epoch"] == 1
    check_plan_semantics(diffs, clusters, CurriculumPlan(p0.stages, p0.info), 1, T)


def test_init_zero_gives_full_rationales_throughout():
    diffs, clusters = random_data(7, n=30)
    plan = make("kpod_knapsack", T=4, init="zero").plan(inputs_from(diffs, clusters))
    assert all(c == 0 for stage in plan.stages for c in stage.values())
    assert plan.info["H_init"] == pytest.approx(plan.info["B"])
    assert all(rec["selected"] == 0 for rec in plan.info["stages"])


def test_exact_solver_is_at_least_as_good_at_the_first_stage():
    diffs, clusters = random_data(8, n=14, max_steps=3)
    ins = inputs_from(diffs, clusters)
    g = make("kpod_knapsack", T=3).plan(ins).info["stages"][0]["G"]
    ex = make("kpod_knapsack", T=3, solver="exact").plan(ins)
    g_ex = ex.info["stages"][0]["G"]
    assert g_ex >= g - 1e-9 and g >= 0.5 * g_ex - 1e-9
    check_plan_semantics(diffs, clusters, ex, 1, 3)
    big, cl = random_data(9, n=40)
    with pytest.raises(ValueError, match="exact"):
        make("kpod_knapsack", T=3, solver="exact").plan(inputs_from(big, cl))


def test_diversity_term_spreads_the_selection():
    # 90 questions in cluster 0 (ids sort first), 10 in cluster 1, identical difficulties.
    diffs = {f"a{i:03d}": [1.0, 1.0, 1.0] for i in range(90)}
    diffs.update({f"b{i:03d}": [1.0, 1.0, 1.0] for i in range(10)})
    clusters = {s: 0 if s[0] == "a" else 1 for s in diffs}
    ins = inputs_from(diffs, clusters)
    picks = {}
    for beta in (0.0, 12.0):
        plan = make("kpod_knapsack", T=10, beta=beta, c0_frac=0.5).plan(ins)  # top-up: 50
        picks[beta] = plan.info["stages"][0]["selected_per_cluster"]
        assert plan.info["stages"][0]["selected"] > 0
    assert picks[0.0]["1"] == 0  # beta = 0: ties by id, all from the big cluster
    assert picks[12.0]["1"] > 0  # beta > 0: the small cluster gets a share
    assert picks[12.0]["0"] > 0


# --- linear and anti_curriculum -----------------------------------------------------------------
def test_linear_schedule():
    n_steps = {"a": 1, "b": 2, "c": 5, "d": 9, "e": 0}
    T = 4
    plan = make("linear", T=T).plan(ScheduleInputs(n_steps=n_steps, num_epochs=8, seed=0))
    assert len(plan.stages) == T
    for s, n in n_steps.items():
        cs = [plan.stages[t][s] for t in range(T)]
        assert cs[0] == max(n - 1, 0)
        assert all(a >= b >= 0 for a, b in zip(cs, cs[1:]))
        for t in range(T):
            assert cs[t] == math.floor((max(n - 1, 0)) * (1 - t / T) + 0.5)
        assert cs[-1] <= math.ceil(max(n - 1, 0) / T)
        assert plan.given_steps(T + 1, s) == 0
    assert linear_given_steps(9, T, T) == 0


def test_anti_curriculum_is_kpod_reversed():
    diffs, clusters = random_data(10, n=60)
    for extra in ({}, {"beta": 0.0, "delta_s": 2}, {"stage_offset": 1}):
        ins = inputs_from(diffs, clusters)
        kp = make("kpod_knapsack", T=6, **extra).plan(ins)
        anti = make("anti_curriculum", T=6, **extra).plan(ins)
        assert anti.stages == kp.stages[::-1]
        assert anti.info["kpod"]["stages"] == kp.info["stages"]
        for s in diffs:  # after T: full rationales, as in every scheduler
            assert anti.given_steps(7, s) == 0
        # epoch 1 outputs the most (KPOD's last state), the last stage outputs the least
        h = [h_total(diffs, st_) for st_ in anti.stages]
        assert all(a >= b - 1e-9 for a, b in zip(h, h[1:]))
    json.dumps(anti.to_json(), allow_nan=False)


def test_per_stage_statistics_account_for_every_selection():
    """plan.json / summary.json per stage: ΔD is the allowance, ΔH the difficulty the selection
    moved to the output (the realised H steps by exactly ΔH), F = G - ΔD, and ``selected``
    counts the questions whose c dropped."""
    rng = random.Random(3)
    diffs = [[rng.uniform(0.2, 3.0) for _ in range(rng.randint(1, 6))] for _ in range(80)]
    clusters = [rng.randrange(4) for _ in diffs]
    stages, info = build_plan(diffs, clusters, T=4)
    h = info["H_init"]
    previous = [max(len(d) - 1, 0) for d in diffs]
    for st_info, c in zip(info["stages"], stages):
        assert st_info["delta_D"] == st_info["allowance"]
        moved = [i for i, (a, b) in enumerate(zip(previous, c)) if b < a]
        assert st_info["selected"] == len(moved)
        moved_cost = math.fsum(sum(diffs[i][c[i]:previous[i]]) for i in moved)
        assert st_info["delta_H"] == pytest.approx(moved_cost, abs=1e-9)
        assert st_info["achieved_H"] == pytest.approx(h + st_info["delta_H"], abs=1e-9)
        assert st_info["delta_H"] <= max(st_info["delta_D"], 0.0) + 1e-9  # Eq. 11's constraint
        assert st_info["F"] == pytest.approx(st_info["G"] - st_info["delta_D"])
        h, previous = st_info["achieved_H"], list(c)
    # with these lengths every stage after the top-up has room and selects someone
    assert all(s["selected"] > 0 for s in info["stages"][1:])
