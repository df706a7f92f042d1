"""The epoch-end scheduler hook (docs/schedulers_hook.md) end to end, with a toy adaptive scheduler
defined here: it advances (one fewer given step) the questions whose output NLL is below a
threshold fixed from epoch 1's median and kept in its state, so a resume that lost the state
would choose differently."""

from __future__ import annotations

import json
import shutil
from typing import Any, ClassVar

import pytest
from pydantic import BaseModel, ConfigDict

from kpod.data.collate import StageCollator
from kpod.data.load import load_data
from kpod.engine.run import run_recipe
from kpod.engine.train import Trainer
from kpod.registry import SCHEDULERS
from kpod.schedulers.base import (
    CurriculumPlan,
    EpochStats,
    ScheduleInputs,
    SchedulerBase,
    is_adaptive,
)
from tests.helpers import tiny_recipe, train_events


class ThresholdToy(SchedulerBase):
    name: ClassVar[str] = "toy_threshold"
    epoch_stats: ClassVar[frozenset[str]] = frozenset({"output_nll", "step_nll"})
    seen: ClassVar[list[EpochStats]] = []  # every call of any instance, for the assertions

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")

    def __init__(self, params: Params | None = None) -> None:
        super().__init__(params)
        self.threshold: float | None = None

    def plan(self, inputs: ScheduleInputs) -> CurriculumPlan:
        return CurriculumPlan(stages=[{sid: max(n - 1, 0) for sid, n in inputs.n_steps.items()}],
                              info={"scheduler": self.name})

    def on_epoch_end(self, stats: EpochStats) -> dict[str, int]:
        self.seen.append(stats)
        if self.threshold is None:
            values = sorted(stats.output_nll.values())
            self.threshold = values[len(values) // 2]
        return advance_rule(stats, self.threshold)

    def state_dict(self) -> dict[str, Any]:
        return {"threshold": self.threshold}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.threshold = state["threshold"]


def advance_rule(stats: EpochStats, threshold: float) -> dict[str, int]:
    return {sid: max(c - 1, 0) if stats.output_nll[sid] < threshold else c for sid, c in stats.given.items()}


@pytest.fixture
def toy():
    SCHEDULERS.register(ThresholdToy)
    ThresholdToy.seen.clear()
    yield ThresholdToy
    SCHEDULERS.unregister(ThresholdToy.name)
    ThresholdToy.seen.clear()


@pytest.fixture
def used_stages(monkeypatch):
    """(epoch, sample_id) → c of every example the Trainer built for training."""
    used: dict[tuple[int, str], int] = {}
    collate = Trainer.collate

    def recording(self, ids, given):
        for sid in ids:
            used[(self.state.epoch, sid)] = given.get(sid, 0)
        return collate(self, ids, given)

    monkeypatch.setattr(Trainer, "collate", recording)
    return used


def crash_after(full, crashed, checkpoint):
    """What a run directory holds after a crash right after ``checkpoint`` was written."""
    crashed.mkdir()
    shutil.copy(full / "recipe.resolved.yaml", crashed / "recipe.resolved.yaml")
    shutil.copytree(full / "tokenizer", crashed / "tokenizer")
    shutil.copytree(full / "checkpoints" / checkpoint, crashed / "checkpoints" / checkpoint)


def test_toy_is_adaptive_and_builtins_are_not(toy):
    assert is_adaptive(toy())
    assert not any(is_adaptive(SCHEDULERS.get(n)()) for n in ("none", "linear"))


def test_adaptive_scheduler_grows_the_plan_and_resumes_mid_curriculum(tmp_path, toy, used_stages):
    # 96 samples, 16 a batch: 6 steps an epoch; checkpoints every 4 steps, step 8 is inside epoch 2
    recipe = tiny_recipe(scheduler={"name": "toy_threshold"}, eval={"select_on": None},
                         train={"epochs": 3, "checkpoint_every": 4, "keep_checkpoints": 10})
    records = {r.sample_id: r for r in load_data(recipe)["train"]}
    full = tmp_path / "full"
    run_recipe(recipe, full, quiet=True)

    # the hook ran after epochs 1 and 2 (not after the last), with stats for every train sample
    calls = list(toy.seen)
    assert [s.epoch for s in calls] == [1, 2]
    for s in calls:
        assert set(s.given) == set(s.output_nll) == set(s.step_nll) == set(records)
        assert all(len(s.step_nll[sid]) == records[sid].n_steps for sid in records)
        assert all(v > 0 for v in s.output_nll.values())
    assert calls[0].given == {sid: r.n_steps - 1 for sid, r in records.items()}

    # the grown plan follows the threshold rule, and training used it
    plan = json.loads((full / "plan.json").read_text())["stages"]
    threshold = sorted(calls[0].output_nll.values())[len(records) // 2]
    assert len(plan) == 3
    assert plan[1] == advance_rule(calls[0], threshold) and calls[1].given == plan[1]
    assert plan[2] == advance_rule(calls[1], threshold)
    advanced = sum(plan[1][sid] < plan[0][sid] for sid in records)
    assert 0 < advanced < len(records)
    assert {(e, sid) for e in (1, 2, 3) for sid in records} == set(used_stages)
    assert all(c == plan[e - 1][sid] for (e, sid), c in used_stages.items())
    events = [json.loads(x) for x in (full / "metrics.jsonl").read_text().splitlines()]
    curriculum = [e for e in events if e["phase"] == "curriculum"]
    assert [e["for_epoch"] for e in curriculum] == [2, 3] and curriculum[0]["advanced"] == advanced
    final = json.loads((full / "checkpoints" / "step-0000018" / "curriculum.json").read_text())
    assert final["scheduler"] == {"threshold": threshold} and final["offline_plan"]["stages"] == plan[:1]

    # crash inside epoch 2, resume: same grown plan, same losses, the hook asked once more
    uninterrupted = {e["step"]: e["loss"] for e in train_events(full)}
    toy.seen.clear()
    crashed = tmp_path / "crashed"
    crash_after(full, crashed, "step-0000008")
    run_recipe(recipe, crashed, resume=True, quiet=True)
    resumed = {e["step"]: e["loss"] for e in train_events(crashed)}
    assert [s.epoch for s in toy.seen] == [2]
    assert json.loads((crashed / "plan.json").read_text())["stages"] == plan
    assert min(resumed) == 9 and all(resumed[k] == uninterrupted[k] for k in resumed)
    assert max(resumed) == 18


def test_resume_from_an_epoch_end_checkpoint_does_not_ask_twice(tmp_path, toy):
    # checkpoint_every 0: the epoch-1 checkpoint (step 6) is written after the hook ran
    recipe = tiny_recipe(scheduler={"name": "toy_threshold"}, eval={"select_on": None},
                         train={"epochs": 3, "keep_checkpoints": 10})
    run_recipe(recipe, tmp_path / "full", quiet=True)
    plan = json.loads((tmp_path / "full" / "plan.json").read_text())["stages"]
    saved = json.loads((tmp_path / "full" / "checkpoints" / "step-0000006" / "plan.json").read_text())["stages"]
    assert saved == plan[:2]
    toy.seen.clear()
    crash_after(tmp_path / "full", tmp_path / "crashed", "step-0000006")
    run_recipe(recipe, tmp_path / "crashed", resume=True, quiet=True)
    assert [s.epoch for s in toy.seen] == [2]
    assert json.loads((tmp_path / "crashed" / "plan.json").read_text())["stages"] == plan


def test_resume_refuses_a_changed_offline_plan(tmp_path, toy):
    from kpod.runs import RunDirError

    recipe = tiny_recipe(scheduler={"name": "toy_threshold"}, eval={"select_on": None},
                         train={"epochs": 2, "checkpoint_every": 4, "keep_checkpoints": 10})
    run_recipe(recipe, tmp_path / "full", quiet=True)
    crashed = tmp_path / "crashed"
    crash_after(tmp_path / "full", crashed, "step-0000008")
    doc = crashed / "checkpoints" / "step-0000008" / "curriculum.json"
    state = json.loads(doc.read_text())
    first = next(iter(state["offline_plan"]["stages"][0]))
    state["offline_plan"]["stages"][0][first] += 1
    doc.write_text(json.dumps(state))
    with pytest.raises(RunDirError, match="curriculum plan differs"):
        run_recipe(recipe, crashed, resume=True, quiet=True)


def test_a_bad_stage_from_the_hook_names_the_scheduler(tmp_path, toy, monkeypatch):
    monkeypatch.setattr(ThresholdToy, "on_epoch_end", lambda self, stats: {"nope": 0})
    recipe = tiny_recipe(scheduler={"name": "toy_threshold"}, eval={"select_on": None}, train={"epochs": 2})
    with pytest.raises(ValueError, match="toy_threshold.*after epoch 1.*every training sample"):
        run_recipe(recipe, tmp_path / "run", quiet=True)


def _example_nll(model, collator: StageCollator, sid: str, c: int):
    """Per-position NLL of one unpadded example at stage ``c`` (positions of its labels) and its labels."""
    import torch

    ex = collator.example(sid, c)
    ids = torch.as_tensor(ex["input_ids"])[None]
    labels = torch.as_tensor(ex["labels"])
    with torch.no_grad():
        if collator.is_encoder_decoder:
            dec = model.prepare_decoder_input_ids_from_labels(labels=labels[None])
            logp = model(input_ids=ids, decoder_input_ids=dec).logits[0].float().log_softmax(-1)
            return [-float(logp[t, labels[t]]) if labels[t] >= 0 else None for t in range(len(labels))], labels
        logp = model(input_ids=ids).logits[0].float().log_softmax(-1)
        # position t predicts token t (from t - 1); the first token is never a target
        return [None] + [-float(logp[t - 1, labels[t]]) if labels[t] >= 0 else None for t in range(1, len(labels))], labels


@pytest.mark.parametrize("arch", ["tiny:llama", "tiny:t5"])
def test_measured_statistics_match_a_direct_computation(arch):
    import numpy as np
    import torch

    from kpod.data.load import template_from
    from kpod.engine.epoch_stats import measure
    from kpod.losses.base import per_token_nll
    from kpod.models.student import load_student

    recipe = tiny_recipe(student={"model": arch})
    train = load_data(recipe)["train"][:5]
    template = template_from(recipe)
    torch.manual_seed(0)
    student = load_student(recipe.student, [template.serialize(r).text for r in train], seed=0)
    model, ed = student.model.eval(), student.is_encoder_decoder
    collator = StageCollator(train, template, student.tokenizer, ed)
    given = {r.sample_id: i % (r.n_steps + 1) for i, r in enumerate(train)}  # 0, 1, 2, … up to all steps

    def token_nll(batch):
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        if ed:
            inputs["decoder_input_ids"] = model.prepare_decoder_input_ids_from_labels(labels=batch["labels"])
        with torch.no_grad():
            return per_token_nll(model(**inputs).logits, batch["labels"], ed)[0]

    ids = [r.sample_id for r in train]
    out_nll, step_nll = measure(token_nll, collator, ids, given, frozenset({"output_nll", "step_nll"}), batch_size=2)
    for r in train:
        sid = r.sample_id
        nll, _ = _example_nll(model, collator, sid, given[sid])
        targets = [x for x in nll if x is not None]
        assert out_nll[sid] == pytest.approx(float(np.mean(targets)), rel=1e-4, abs=1e-5)
        full, _ = _example_nll(model, collator, sid, 0)
        anchors = collator.target_anchors(sid, 0)
        ser = template.serialize(r)
        want = [float(np.mean([full[t] for t in range(len(full)) if s <= anchors[t] < e])) for s, e in ser.steps]
        assert step_nll[sid] == pytest.approx(want, rel=1e-4, abs=1e-5)
