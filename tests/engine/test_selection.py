"""Model selection on validation (eval.select_on): the best evaluation wins, and resume keeps it."""

from __future__ import annotations

import json

import pytest
import torch

from kpod.engine.checkpointing import last_checkpoint
from kpod.engine.run import run_recipe
from tests.helpers import make_trainer as _trainer
from tests.helpers import tiny_recipe

# 96 training examples, batch 16: 6 optimizer steps per epoch; epoch ends at steps 6, 12, 18
SCORES = {6: 0.25, 12: 0.75, 18: 0.5}


class Crash(RuntimeError):
    pass


def _scripted(calls, crash_at=None):
    def select(step):
        calls.append(step)
        if step == crash_at:
            raise Crash(step)
        return SCORES[step]

    return select


def _recipe():
    return tiny_recipe(train={"epochs": 3, "keep_checkpoints": 10})


def test_best_step_is_selected_and_loaded(tmp_path):
    trainer, _ = _trainer(_recipe(), tmp_path)
    calls = []
    trainer.select = _scripted(calls)
    state = trainer.train()
    assert calls == [6, 12, 18]  # every epoch end, the last one once
    assert (state.best_step, state.best_score) == (12, 0.75)
    # only the selected model is kept on disk
    assert [p.name for p in (tmp_path / "selected").iterdir()] == ["step-0000012"]
    assert state.global_step == 18
    trainer.load_selected()
    at_12 = torch.load(tmp_path / "checkpoints" / "step-0000012" / "model.pt", weights_only=True)
    for name, value in trainer.model.state_dict().items():
        assert torch.equal(value, at_12[name]), name


def test_selection_every_n_steps_and_ties_keep_the_earlier_step(tmp_path):
    trainer, _ = _trainer(_recipe(), tmp_path)
    seen = []

    def flat(step):
        seen.append(step)
        return 0.5

    trainer.select, trainer.select_every_steps = flat, 4
    state = trainer.train()
    assert seen == [4, 8, 12, 16, 18]  # every 4 steps, and the final model
    assert state.best_step == 4


def test_resume_keeps_the_selection_and_does_not_evaluate_twice(tmp_path):
    straight_dir, crash_dir = tmp_path / "straight", tmp_path / "crash"
    straight, _ = _trainer(_recipe(), straight_dir)
    straight.select = _scripted([])
    expected = straight.train()
    straight.load_selected()
    want = {k: v.clone() for k, v in straight.model.state_dict().items()}

    first, _ = _trainer(_recipe(), crash_dir)
    first.select = _scripted([], crash_at=18)  # dies evaluating the last epoch
    with pytest.raises(Crash):
        first.train()
    ckpt = last_checkpoint(crash_dir)
    assert ckpt.name == "step-0000012"

    resumed, _ = _trainer(_recipe(), crash_dir)
    calls = []
    resumed.select = _scripted(calls)
    resumed.load_checkpoint(ckpt)
    assert (resumed.state.best_step, resumed.state.best_score) == (12, 0.75)
    state = resumed.train()
    assert calls == [18]  # steps 6 and 12 were evaluated before the crash
    assert (state.best_step, state.best_score) == (expected.best_step, expected.best_score)
    resumed.load_selected()
    for name, value in resumed.model.state_dict().items():
        assert torch.equal(value, want[name]), name


def test_run_reports_every_split_on_the_selected_model(tmp_path):
    recipe = tiny_recipe(train={"epochs": 3}, eval={"splits": ["validation", "test"], "max_new_tokens": 16})
    summary = run_recipe(recipe, tmp_path / "run", quiet=True)
    sel = summary["selection"]
    events = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    during = [e for e in events if e.get("during_training")]
    assert [e["step"] for e in during] == [6, 12, 18] == [e["step"] for e in sel["evaluations"]]
    best = max(during, key=lambda e: (e["accuracy"], -e["step"]))
    assert sel["step"] == best["step"] and sel["score"] == best["accuracy"]
    # the final validation figure is the selected model's (the same questions, the same model)
    assert summary["splits"]["validation"]["accuracy"] == best["accuracy"]
    final = [e for e in events if e.get("phase") == "eval" and not e.get("during_training")]
    assert {e["model_step"] for e in final} == {sel["step"]}


def test_selection_split_must_exist(tmp_path):
    from kpod.recipe import RecipeError

    recipe = tiny_recipe(train={"epochs": 1, "max_steps": 1}, eval={"select_on": "dev"})
    with pytest.raises(RecipeError, match="eval.select_on: split 'dev' is not in the data"):
        run_recipe(recipe, tmp_path / "run", quiet=True)


def test_no_training_step_means_nothing_to_select(tmp_path):
    recipe = tiny_recipe(train={"epochs": 0}, eval={"splits": ["test"], "max_new_tokens": 4})
    summary = run_recipe(recipe, tmp_path / "run", quiet=True)
    assert summary["train"]["steps"] == 0
    assert summary["selection"]["step"] is None and summary["selection"]["evaluations"] == []
    assert summary["splits"]["test"]["count"] == 8
