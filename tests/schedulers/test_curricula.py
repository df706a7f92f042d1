"""The Table 2 curricula as schedulers (kpod/schedulers/curricula.py) on hand-made inputs:
SPL advances exactly the questions under λ and λ grows per stage; ACL's pace and its choice of
the easiest re-measured steps; ICL's plan of prefix ratios; state round trips for resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kpod.engine.curriculum import AdaptiveCurriculum
from kpod.recipe import RecipeError, load_recipe
from kpod.registry import SCHEDULERS
from kpod.schedulers.base import CurriculumPlan, EpochStats, ScheduleInputs, is_adaptive
from kpod.schedulers.curricula import AdaptiveCL, InSampleCL, InSampleCLValidation, SelfPaced

N_STEPS = {"a": 3, "b": 3, "c": 2, "d": 4, "e": 1}


def inputs(epochs: int = 6, difficulties: dict[str, list[float]] | None = None) -> ScheduleInputs:
    return ScheduleInputs(n_steps=dict(N_STEPS), num_epochs=epochs, seed=0, difficulties=difficulties)


def test_registered_names_and_kinds():
    assert SCHEDULERS.get("spl") is SelfPaced and SCHEDULERS.get("icl") is InSampleCL
    assert SCHEDULERS.get("acl") is SCHEDULERS.get("adaptive_cl") is AdaptiveCL  # kpod_method §10(o)'s name
    assert is_adaptive(SelfPaced()) and is_adaptive(AdaptiveCL()) and not is_adaptive(InSampleCL())


# ------------------------------------------------------------------------------------------ SPL
def test_spl_advances_exactly_the_questions_under_a_growing_lambda():
    spl = SelfPaced(SelfPaced.Params(mu=2.0, init_quantile=0.5, T=3))
    plan = spl.plan(inputs())
    assert plan.stages == [{"a": 2, "b": 2, "c": 1, "d": 3, "e": 0}]
    given = plan.stages[0]
    # "e" is at c = 0 (one step): no loss needed, and it does not enter λ_1's quantile
    loss = {"a": 1.0, "b": 3.0, "c": 2.0, "d": 5.0, "e": 0.01}
    s1 = spl.on_epoch_end(EpochStats(1, given, output_nll=loss))
    assert spl.lambda0 == pytest.approx(2.5)  # median of {1, 3, 2, 5}
    assert s1 == {"a": 1, "b": 2, "c": 0, "d": 3, "e": 0}  # 1.0 and 2.0 < 2.5; 3.0, 5.0 not
    # stage 2: λ = 2.5 · 2 = 5; 3.0 is now under it, 5.0 is not (strict <)
    s2 = spl.on_epoch_end(EpochStats(2, s1, output_nll=loss))
    assert spl.threshold(2) == pytest.approx(5.0)
    assert s2 == {"a": 0, "b": 1, "c": 0, "d": 3, "e": 0}
    # from stage T = 3 on: every question on its full rationale
    assert spl.on_epoch_end(EpochStats(3, s2, output_nll=loss)) == dict.fromkeys(N_STEPS, 0)


def test_spl_state_round_trip_answers_the_same():
    spl = SelfPaced(SelfPaced.Params(T=4))
    given = spl.plan(inputs(8)).stages[0]
    loss = {"a": 0.5, "b": 0.9, "c": 1.2, "d": 0.7, "e": 0.1}
    s1 = spl.on_epoch_end(EpochStats(1, given, output_nll=loss))
    state = json.loads(json.dumps(spl.state_dict()))
    fresh = SelfPaced(SelfPaced.Params(T=4))
    fresh.plan(inputs(8))
    fresh.load_state_dict(state)
    later = {"a": 0.6, "b": 0.95, "c": 1.1, "d": 0.8, "e": 0.1}  # λ_1 stays from epoch 1
    assert fresh.on_epoch_end(EpochStats(2, s1, output_nll=later)) == spl.on_epoch_end(
        EpochStats(2, s1, output_nll=later))


def test_spl_needs_a_loss_for_every_question_that_can_move():
    spl = SelfPaced()
    given = spl.plan(inputs()).stages[0]
    with pytest.raises(KeyError, match="no measured loss"):
        spl.on_epoch_end(EpochStats(1, given, output_nll={"a": 1.0, "b": 1.0, "c": 1.0}))


# ------------------------------------------------------------------------------------------ ACL
DIFF = {"a": [1.0, 1.0, 1.0], "b": [1.0, 1.0, 1.0], "c": [1.0, 1.0], "d": [1.0, 1.0, 1.0, 1.0], "e": [1.0]}


def test_acl_pace_starts_at_the_initial_output_share_and_reaches_one_at_T():
    acl = AdaptiveCL(AdaptiveCL.Params(T=3))
    acl.plan(inputs(6, DIFF))
    share0 = 5 / 13  # one output step per question, 13 steps in all
    assert acl.start == pytest.approx(share0)
    assert [acl.pace(t) for t in range(4)] == pytest.approx(
        [share0, share0 * acl.growth, share0 * acl.growth**2, 1.0])
    assert acl.growth == pytest.approx((1 / share0) ** (1 / 3))
    small = AdaptiveCL(AdaptiveCL.Params(T=2, start=0.5, growth=1.5, every=2))
    small.plan(inputs(6, DIFF))
    assert [small.pace(t) for t in range(5)] == pytest.approx([0.5, 0.5, 0.75, 0.75, 1.0])


def test_acl_advances_the_easiest_by_re_measured_difficulty():
    acl = AdaptiveCL(AdaptiveCL.Params(alpha=1.0, start=0.5, growth=1.0, T=5))  # g = 0.5: 7 of 13 steps
    given = acl.plan(inputs(10, DIFF)).stages[0]
    # the initial difficulty says "d" is easiest; the current student finds "b" and "c" easiest
    acl.difficulty["d"] = [0.0, 0.0, 0.0, 0.0]
    measured = {"a": [3.0, 3.0, 3.0], "b": [2.0, 0.1, 9.0], "c": [0.2, 9.0], "d": [5.0, 5.0, 5.0, 5.0], "e": [0.0]}
    nxt = acl.on_epoch_end(EpochStats(1, given, step_nll=measured))
    assert acl.difficulty == measured  # alpha = 1: the re-measured loss only
    # 5 steps out, 7 wanted: the two cheapest next steps move: b (step 2: 0.1), c (step 1: 0.2)
    assert nxt == {"a": 2, "b": 1, "c": 0, "d": 3, "e": 0}
    out = sum(N_STEPS[s] - c for s, c in nxt.items())
    assert out / 13 >= 0.5


def test_acl_blends_difficulty_and_round_trips_its_state():
    acl = AdaptiveCL(AdaptiveCL.Params(alpha=0.25, T=3))
    given = acl.plan(inputs(6, DIFF)).stages[0]
    measured = {s: [float(i + 2) for i in range(n)] for s, n in N_STEPS.items()}
    s1 = acl.on_epoch_end(EpochStats(1, given, step_nll=measured))
    assert acl.difficulty["d"] == pytest.approx([0.75 + 0.5, 0.75 + 0.75, 0.75 + 1.0, 0.75 + 1.25])
    fresh = AdaptiveCL(AdaptiveCL.Params(alpha=0.25, T=3))
    fresh.plan(inputs(6, DIFF))
    fresh.load_state_dict(json.loads(json.dumps(acl.state_dict())))
    assert fresh.on_epoch_end(EpochStats(2, s1, step_nll=measured)) == acl.on_epoch_end(
        EpochStats(2, s1, step_nll=measured))
    assert acl.on_epoch_end(EpochStats(3, s1, step_nll=measured)) == dict.fromkeys(N_STEPS, 0)


def test_acl_refuses_a_plan_without_difficulties():
    with pytest.raises(ValueError, match="needs step difficulties"):
        AdaptiveCL().plan(inputs())


# ------------------------------------------------------------------------------------------ ICL
def test_icl_plan_is_a_fixed_pace_of_prefix_ratios_and_survives_json():
    plan = InSampleCL().plan(inputs())
    assert plan.ratios == [0.6, 0.3] and plan.stages == [dict.fromkeys(sorted(N_STEPS), 0)] * 2
    assert [plan.prefix_ratio(e) for e in (1, 2, 3, 9)] == [0.6, 0.3, 0.0, 0.0]
    back = CurriculumPlan.from_json(json.loads(json.dumps(plan.to_json())))
    assert (back.stages, back.ratios) == (plan.stages, plan.ratios)
    slow = InSampleCL(InSampleCL.Params(start=0.5, stride=0.2)).plan(inputs())
    assert slow.ratios == pytest.approx([0.5, 0.3, 0.1])


def icl_validation(**params) -> InSampleCL:
    return InSampleCL(InSampleCL.Params(pace="validation", **params))


def test_icl_validation_pace_is_the_adaptive_kind_of_icl():
    sched = icl_validation(patience=2)
    assert type(sched) is InSampleCLValidation and is_adaptive(sched) and sched.epoch_stats == {"validation_score"}
    assert type(InSampleCL(InSampleCL.Params(pace="fixed"))) is InSampleCL
    plan = sched.plan(inputs())
    assert plan.ratios == [0.6] and plan.stages == [dict.fromkeys(sorted(N_STEPS), 0)]


def test_icl_validation_pace_advances_exactly_after_patience_epochs_without_a_best():
    sched = icl_validation(start=0.9, stride=0.3, patience=2)
    plan = sched.plan(inputs())
    zero = plan.stages[0]
    scores = [0.50, 0.50, 0.40, 0.60, 0.55, 0.60, 0.10]
    ratios = []
    for epoch, score in enumerate(scores, start=1):
        assert sched.on_epoch_end(EpochStats(epoch=epoch, given=dict(zero), validation_score=score)) == zero
        ratios.append(sched.next_prefix_ratio())
    # best 0.50; 0.50 (tie) and 0.40: two without a best -> 0.6; 0.60 best; 0.55, 0.60 (tie) -> 0.3
    assert ratios == pytest.approx([0.9, 0.9, 0.6, 0.6, 0.6, 0.3, 0.3])
    again = icl_validation(start=0.9, stride=0.3, patience=2)
    again.plan(inputs())
    again.load_state_dict(json.loads(json.dumps(sched.state_dict())))
    sched.on_epoch_end(EpochStats(epoch=8, given=dict(zero), validation_score=0.0))
    again.on_epoch_end(EpochStats(epoch=8, given=dict(zero), validation_score=0.0))
    assert again.next_prefix_ratio() == sched.next_prefix_ratio() == 0.0
    with pytest.raises(ValueError, match="eval.select_on"):
        sched.on_epoch_end(EpochStats(epoch=9, given=dict(zero)))


def test_the_hook_grows_a_token_level_plan_by_the_schedulers_ratio():
    sched = icl_validation()
    plan = sched.plan(inputs())
    cur = AdaptiveCurriculum(sched, plan, dict(N_STEPS))
    stats = EpochStats(epoch=1, given=cur.given(1), validation_score=0.2)
    cur.grow(1, cur.next_stage(stats), cur.next_ratio(1))
    cur.grow(2, cur.next_stage(EpochStats(epoch=2, given=cur.given(2), validation_score=0.1)), cur.next_ratio(2))
    assert plan.ratios == [0.6, 0.6, 0.3] and len(plan.stages) == 3
    assert [plan.prefix_ratio(e) for e in (1, 2, 3, 4)] == [0.6, 0.6, 0.3, 0.0]
    # --resume: the grown stages, their ratios and the pace come back from the checkpoint
    fresh = icl_validation()
    resumed = fresh.plan(inputs())
    AdaptiveCurriculum(fresh, resumed, dict(N_STEPS)).restore(
        json.loads(json.dumps(cur.state())), CurriculumPlan.from_json(plan.to_json()), Path("ckpt"))
    assert (resumed.stages, resumed.ratios) == (plan.stages, plan.ratios)
    assert fresh.state_dict() == sched.state_dict()
    with pytest.raises(ValueError, match="prefix ratios exactly when"):
        AdaptiveCurriculum(SelfPaced(), CurriculumPlan(stages=[{"a": 0}], ratios=[0.5]), {"a": 1})


def test_icl_validation_pace_without_select_on_is_refused_naming_the_field():
    with pytest.raises(RecipeError, match=r"eval\.select_on: null.*validation_score"):
        load_recipe("recipes/ablations/icl.yaml", ["scheduler.params.pace=validation", "eval.select_on=null"])
    assert load_recipe("recipes/ablations/icl.yaml", ["eval.select_on=null"]).scheduler.params.pace == "fixed"


def test_step_plans_keep_their_json_and_bad_ratios_are_refused():
    step = CurriculumPlan(stages=[{"a": 1}], info={"x": 1})
    assert step.to_json() == {"stages": [{"a": 1}], "info": {"x": 1}}  # no "ratios" key: plan.json unchanged
    assert CurriculumPlan.from_json(step.to_json()).ratios is None and step.prefix_ratio(1) == 0.0
    with pytest.raises(ValueError, match="2 prefix ratios for 1 stages"):
        CurriculumPlan(stages=[{"a": 0}], ratios=[0.5, 0.2])
    with pytest.raises(ValueError, match=r"in \[0, 1\)"):
        CurriculumPlan(stages=[{"a": 0}], ratios=[1.0])
