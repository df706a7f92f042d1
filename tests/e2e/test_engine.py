"""End-to-end engine tests on tiny students: learning, exact accumulation, resume."""

from __future__ import annotations

import json

import pytest
import torch

from kpod.data.collate import StageCollator
from kpod.data.load import load_data, template_from
from kpod.engine.run import run_recipe
from kpod.models.student import load_student
from tests.helpers import (
    KPOD_TINY,
    crash_after,
    first_step_grads,
    make_trainer,
    tiny_recipe,
    train_events,
)


@pytest.mark.parametrize("model", ["tiny:llama", "tiny:t5"])
def test_tiny_student_loss_falls(tmp_path, model):
    recipe = tiny_recipe(student={"model": model}, train={"epochs": 3})
    summary = run_recipe(recipe, tmp_path / "run", quiet=True)
    losses = [e["loss"] for e in train_events(tmp_path / "run")]
    assert summary["train"]["steps"] == len(losses) == 18
    assert summary["student"]["encoder_decoder"] is (model == "tiny:t5")
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < 0.8 * first, (first, last)
    for name in ("recipe.resolved.yaml", "metrics.jsonl", "summary.json", "plan.json"):
        assert (tmp_path / "run" / name).exists()


def test_run_dir_refuses_to_clobber(tmp_path):
    from kpod.runs import RunDirError

    recipe = tiny_recipe(train={"epochs": 1, "max_steps": 1})
    run_recipe(recipe, tmp_path / "run", quiet=True)
    with pytest.raises(RunDirError, match="--resume"):
        run_recipe(recipe, tmp_path / "run", quiet=True)


def test_evaluation_writes_predictions_by_sample_id(tmp_path):
    recipe = tiny_recipe(train={"epochs": 1, "max_steps": 2}, eval={"splits": ["test", "nope"], "limit": 5})
    summary = run_recipe(recipe, tmp_path / "run", quiet=True)
    rows = [json.loads(x) for x in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    assert [r["sample_id"] for r in rows] == [f"arith/test/{i:05d}" for i in range(5)]
    assert set(rows[0]) >= {"sample_id", "prompt", "output", "parsed", "gold", "correct"}
    assert rows[0]["prompt"].endswith("A: Let's think step by step.")
    assert summary["splits"]["test"]["count"] == 5
    assert summary["missing_splits"] == ["nope"]


@pytest.mark.parametrize("model", ["tiny:llama", "tiny:t5"])
def test_k_accumulated_micro_batches_equal_one_big_batch(model, tmp_path):
    """Σ(w·ℓ)/Σw over the window: 4 micro-batches of 4 == 1 batch of 16, with uneven weights."""
    big = tiny_recipe(student={"model": model}, loss={"name": "kpod"}, train={"batch_size": 16, "grad_accum": 1, "grad_clip": None})
    small = tiny_recipe(student={"model": model}, loss={"name": "kpod"}, train={"batch_size": 4, "grad_accum": 4, "grad_clip": None})
    records = load_data(big)["train"]
    # uneven weights: every third sample's rationale weighs 0.1, the others 0.9 on the first half
    weights = {
        r.sample_id: [(0, len(r.rationale) // 2, 0.1 if i % 3 == 0 else 0.9)] for i, r in enumerate(records)
    }
    tb, _ = make_trainer(big, tmp_path, weights)
    ts, _ = make_trainer(small, tmp_path, weights)
    gb, gs = first_step_grads(tb), first_step_grads(ts)
    assert len(gb) == len(gs) > 0
    for a, b in zip(gb, gs):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    # and a mean of per-micro-batch means would differ: the reduction really is global
    assert any(not torch.allclose(a, 0.25 * b) for a, b in zip(gb, gs))


def test_resume_reproduces_next_step_loss(tmp_path):
    # selection off: this copies only the checkpoint (tests/engine/test_selection.py covers resume with it)
    recipe = tiny_recipe(train={"epochs": 2, "checkpoint_every": 4, "keep_checkpoints": 10}, eval={"select_on": None})
    full = tmp_path / "full"
    run_recipe(recipe, full, quiet=True)
    uninterrupted = {e["step"]: e["loss"] for e in train_events(full)}
    # simulate a crash right after the checkpoint at step 4: keep only what existed then
    crashed = tmp_path / "crashed"
    crash_after(full, crashed, "step-0000004")
    run_recipe(recipe, crashed, resume=True, quiet=True)
    resumed = {e["step"]: e["loss"] for e in train_events(crashed)}
    assert min(resumed) == 5
    assert resumed[5] == uninterrupted[5]
    assert resumed[max(resumed)] == uninterrupted[max(uninterrupted)]


def test_resume_refuses_a_changed_recipe(tmp_path):
    from kpod.recipe import RecipeError

    run_recipe(tiny_recipe(train={"epochs": 1, "max_steps": 2}), tmp_path / "r", quiet=True)
    with pytest.raises(RecipeError, match="lr"):
        run_recipe(tiny_recipe(train={"epochs": 1, "max_steps": 2, "lr": 0.5}), tmp_path / "r", resume=True, quiet=True)


def test_progressive_run_trains_stage_targets_and_resumes_mid_curriculum(tmp_path, monkeypatch):
    monkeypatch.setenv("KPOD_CACHE", str(tmp_path / "cache"))
    recipe = tiny_recipe(**KPOD_TINY, eval={"select_on": None})  # _crash_after copies no selected model
    full = tmp_path / "full"
    summary = run_recipe(recipe, full, quiet=True)
    plan = json.loads((full / "plan.json").read_text())
    assert len(plan["stages"]) == 2
    stage0 = plan["stages"][0]
    records = {r.sample_id: r for r in load_data(recipe)["train"]}
    # the curriculum really starts with late steps as targets: most questions are given steps
    assert sum(1 for sid, c in stage0.items() if c > 0) > len(stage0) // 2
    assert all(0 <= c <= records[sid].n_steps - 1 for sid, c in stage0.items())
    assert summary["scheduler"]["name"] == "kpod_knapsack" and summary["scheduler"]["difficulty"]["total_B"] > 0
    assert summary["weighting"]["cache_hit"] is False
    uninterrupted = {e["step"]: e["loss"] for e in train_events(full)}
    # crash inside epoch 2 (stage 1): keep only the checkpoint at step 9, then resume
    crashed = tmp_path / "crashed"
    crash_after(full, crashed, "step-0000009")
    resumed_summary = run_recipe(recipe, crashed, resume=True, quiet=True)
    resumed = {e["step"]: e["loss"] for e in train_events(crashed)}
    assert resumed_summary["weighting"]["cache_hit"] is True  # weights re-used, not refitted
    assert json.loads((crashed / "plan.json").read_text())["stages"] == plan["stages"]
    assert min(resumed) == 10 and resumed[10] == uninterrupted[10]
    assert resumed[max(resumed)] == uninterrupted[max(uninterrupted)]


def test_too_long_examples_error_or_are_skipped_and_counted(tmp_path):
    from kpod.data.records import DataError

    recipe = tiny_recipe(train={"epochs": 1, "max_steps": 2})
    splits = load_data(recipe)
    template = template_from(recipe)
    student = load_student(recipe.student, [template.serialize(r).text for r in splits["train"]], seed=0)
    lengths = sorted(len(StageCollator(splits["train"], template, student.tokenizer, False)._causal[r.sample_id][0].input_ids)
                     for r in splits["train"])
    median = lengths[len(lengths) // 2]
    with pytest.raises(DataError, match="on_too_long: skip"):
        run_recipe(tiny_recipe(train={"epochs": 1, "max_steps": 2}, data={"max_length": median}), tmp_path / "a", quiet=True)
    summary = run_recipe(tiny_recipe(train={"epochs": 1, "max_steps": 2}, data={"max_length": median, "on_too_long": "skip"}),
                         tmp_path / "b", quiet=True)
    skipped = summary["data_report"]["skipped_too_long"]
    assert skipped["count"] == sum(1 for n in lengths if n > median) > 0
    assert len(skipped["sample_ids"]) == skipped["count"]
