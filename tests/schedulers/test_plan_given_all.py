"""plan.json and ``kpod plan`` report what the collator trains on for records whose whole rationale
is always input (``meta["given"] == "all"``, SCOTT's counterfactuals): their step count, while the
stages the engine passes on (and the scheduler sees) stay the scheduler's."""

from __future__ import annotations

import json

from kpod.data.collate import StageCollator, given_all
from kpod.engine.prepare import prepare
from kpod.progress import Reporter
from kpod.recipe import load_recipe
from kpod.reports.exports import export_plan
from kpod.schedulers.base import CurriculumPlan
from kpod.tracking import curriculum_stats

TINY = [
    "data.source.params={n_train: 12, n_validation: 2, n_test: 0, n_ood: 0, max_steps: 3}",
    "student.pretrain=null",
    "student.tiny={hidden_size: 32, num_layers: 1, num_heads: 2, intermediate_size: 64}",
    "student.tokenizer.vocab_size=200",
    # a tokenizer trained on 12 training texts has not seen every capital of the validation names
    "data.max_unknown_fraction=0.1",
    "train.epochs=2", "train.threads=1",
    "scheduler={name: linear, params: {T: 2}}",  # a plan with stages (scott.yaml has none)
]


def test_given_all_shows_step_counts_and_leaves_stages_alone():
    plan = CurriculumPlan(stages=[{"a": 2, "a#cf": 2}, {"a": 1, "a#cf": 0}], given_all={"a#cf": 3})
    assert plan.effective_stages() == [{"a": 2, "a#cf": 3}, {"a": 1, "a#cf": 3}]
    assert plan.given_steps(2, "a#cf") == 0  # what the engine hands the collator is unchanged
    doc = plan.to_json()
    assert doc["given_all"] == {"a#cf": 3}
    assert CurriculumPlan.from_json(json.loads(json.dumps(doc))) == plan
    stats = curriculum_stats(doc)
    assert [s["questions_full_rationale"] for s in stats] == [0.0, 0.0]
    assert [s["mean_given_steps"] for s in stats] == [2.5, 2.0]
    # a plan without such records keeps its plan.json exactly as before
    assert "given_all" not in CurriculumPlan(stages=[{"a": 1}]).to_json()


def test_kpod_plan_reports_what_the_collator_trains_on_for_scott(tmp_path, monkeypatch):
    monkeypatch.setenv("KPOD_CACHE", str(tmp_path / "cache"))
    recipe = load_recipe("recipes/baselines/scott.yaml", TINY)
    doc = json.loads(json.dumps(export_plan(recipe, tmp_path / "plan.json", quiet=True)))
    setup = prepare(recipe, Reporter(quiet=True))
    cf = {r.sample_id: r.n_steps for r in setup.train if given_all(r)}
    assert cf and doc["given_all"] == cf and all(sid.endswith("#cf") for sid in cf)
    plan = CurriculumPlan.from_json(doc)
    assert any(stage[sid] < n for stage in plan.stages for sid, n in cf.items())  # the scheduler's c differs
    collator = StageCollator(setup.train, setup.template, setup.tokenizer, setup.student.is_encoder_decoder)
    for stage, shown in zip(plan.stages, plan.effective_stages(), strict=True):
        for sid, c in stage.items():
            assert shown[sid] == collator.effective_given(sid, c), sid
    counted = [sum(hist.values()) for hist in doc["questions_per_c"]]
    assert counted == [len(setup.train)] * len(plan.stages)
    for t, hist in enumerate(doc["questions_per_c"]):
        assert hist == {str(c): n for c, n in sorted(_hist(plan.effective_stages()[t]).items())}


def _hist(stage: dict[str, int]) -> dict[int, int]:
    out: dict[int, int] = {}
    for c in stage.values():
        out[c] = out.get(c, 0) + 1
    return out
