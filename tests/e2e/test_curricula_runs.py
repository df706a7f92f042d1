"""Tiny end-to-end runs of the Table 2 curricula (spl, acl, icl): the plan the run grows or
writes, what training used, and an ACL run resumed inside epoch 2 that continues exactly."""

from __future__ import annotations

import json
import shutil
from typing import Any

import pytest

from kpod.data.collate import StageCollator
from kpod.engine.run import run_recipe
from kpod.schedulers.base import EpochStats
from kpod.schedulers.curricula import AdaptiveCL, SelfPaced
from kpod.schedulers.curricula_math import (
    IclValidationPace,
    acl_advance,
    acl_update_difficulty,
    spl_advance,
)
from tests.helpers import tiny_recipe, train_events


def recipe_for(scheduler: dict[str, Any], **train: Any) -> Any:
    return tiny_recipe(scheduler=scheduler, eval={"select_on": None},
                       train={"epochs": 3, "keep_checkpoints": 10, **train})


def spy(monkeypatch, cls: type) -> list[tuple[EpochStats, dict[str, Any]]]:
    """Every ``on_epoch_end`` call with the scheduler's state just before it."""
    calls: list[tuple[EpochStats, dict[str, Any]]] = []
    real = cls.on_epoch_end

    def recording(self, stats):
        calls.append((stats, json.loads(json.dumps(self.state_dict()))))
        return real(self, stats)

    monkeypatch.setattr(cls, "on_epoch_end", recording)
    return calls


def stages(run_dir) -> list[dict[str, int]]:
    return json.loads((run_dir / "plan.json").read_text())["stages"]


def test_spl_run_grows_its_plan_by_the_threshold_rule(tmp_path, monkeypatch):
    calls = spy(monkeypatch, SelfPaced)
    run_recipe(recipe_for({"name": "spl", "params": {"T": 3, "mu": 1.5}}), tmp_path / "r", quiet=True)
    plan = stages(tmp_path / "r")
    assert [c[0].epoch for c in calls] == [1, 2] and len(plan) == 3
    (s1, _), (s2, st2) = calls
    assert s1.given == plan[0] and s2.given == plan[1]
    lam0 = st2["lambda0"]
    assert plan[1] == spl_advance(s1.given, s1.output_nll, lam0)
    assert plan[2] == spl_advance(s2.given, s2.output_nll, lam0 * 1.5)
    assert 0 < sum(plan[1][s] < plan[0][s] for s in plan[0]) < len(plan[0])  # some advanced, not all


def test_icl_run_trains_on_the_paced_prefix_ratios(tmp_path, monkeypatch):
    used: list[float] = []
    real = StageCollator.example

    def recording(self, sample_id, given_steps, prefix_ratio=0.0):
        used.append(prefix_ratio)
        return real(self, sample_id, given_steps, prefix_ratio)

    monkeypatch.setattr(StageCollator, "example", recording)
    run_recipe(recipe_for({"name": "icl"}, checkpoint_every=4), tmp_path / "r", quiet=True)
    saved = json.loads((tmp_path / "r" / "plan.json").read_text())
    assert saved["ratios"] == [0.6, 0.3] and all(set(s.values()) == {0} for s in saved["stages"])
    assert [r for i, r in enumerate(used) if i == 0 or used[i - 1] != r] == [0.6, 0.3, 0.0]
    assert used.count(0.6) == used.count(0.3) == used.count(0.0) == 96  # every sample once an epoch
    events = train_events(tmp_path / "r")
    # less target per sequence early on: tokens trained per step grow with the pace
    tokens = [sum(e["tokens"] for e in events if e["epoch"] == ep) for ep in (1, 2, 3)]
    assert tokens[0] < tokens[1] < tokens[2]


def test_icl_validation_pace_run_lowers_p_from_the_epoch_end_selection_scores(tmp_path, monkeypatch):
    used: list[float] = []
    real = StageCollator.example

    def recording(self, sample_id, given_steps, prefix_ratio=0.0):
        used.append(prefix_ratio)
        return real(self, sample_id, given_steps, prefix_ratio)

    monkeypatch.setattr(StageCollator, "example", recording)
    recipe = tiny_recipe(scheduler={"name": "icl", "params": {"pace": "validation", "start": 0.6, "stride": 0.3}},
                         eval={"select_on": "validation", "select_every_steps": 5, "max_new_tokens": 8},
                         train={"epochs": 3})
    run_recipe(recipe, tmp_path / "r", quiet=True)
    events = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    evals = {e["step"]: e["accuracy"] for e in events if e.get("phase") == "eval" and e.get("during_training")}
    hook = [e for e in events if e.get("phase") == "curriculum"]
    ends = [max(e["step"] for e in train_events(tmp_path / "r") if e["epoch"] == ep) for ep in (1, 2)]
    assert [h["step"] for h in hook] == ends and all(s in evals for s in ends)  # evaluated at each epoch end
    assert [h["validation_score"] for h in hook] == [evals[s] for s in ends]
    pace = IclValidationPace(0.6, 0.3, 1)
    want = [0.6] + [pace.update(evals[s]) for s in ends]
    saved = json.loads((tmp_path / "r" / "plan.json").read_text())
    assert saved["ratios"] == want and [h["prefix_ratio"] for h in hook] == want[1:]
    assert all(set(st.values()) == {0} for st in saved["stages"])
    assert [used[96 * ep] for ep in range(3)] == want and len(used) == 3 * 96  # what training used


def test_acl_run_grows_by_re_measured_difficulty_and_resumes_exactly(tmp_path, monkeypatch):
    calls = spy(monkeypatch, AdaptiveCL)
    recipe = recipe_for({"name": "acl", "params": {"T": 3}}, checkpoint_every=4)
    full = tmp_path / "full"
    run_recipe(recipe, full, quiet=True)
    plan = stages(full)
    info = json.loads((full / "plan.json").read_text())["info"]
    assert [c[0].epoch for c in calls] == [1, 2] and len(plan) == 3
    for (stats, state), nxt in zip(calls, plan[1:]):
        d = acl_update_difficulty(state["difficulty"], stats.step_nll, 0.7)
        pace = min(1.0, info["start"] * info["growth"] ** stats.epoch)
        assert nxt == acl_advance(stats.given, d, pace)
    assert plan[1] != plan[0]

    uninterrupted = {e["step"]: e["loss"] for e in train_events(full)}
    calls.clear()
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    for name in ("recipe.resolved.yaml", "tokenizer"):
        src = full / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, crashed / name)
    shutil.copytree(full / "checkpoints" / "step-0000008", crashed / "checkpoints" / "step-0000008")
    run_recipe(recipe, crashed, resume=True, quiet=True)
    assert [c[0].epoch for c in calls] == [2]
    assert stages(crashed) == plan
    resumed = {e["step"]: e["loss"] for e in train_events(crashed)}
    assert min(resumed) == 9 and max(resumed) == 18
    assert all(resumed[k] == pytest.approx(uninterrupted[k], abs=0) for k in resumed)
