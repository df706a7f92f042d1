"""A tiny end-to-end ``mcc_kd`` run on grouped batches, and the exactness of its consistency
term's normalisation under gradient accumulation."""

from __future__ import annotations

import json

import pytest
import torch

from kpod.data.collate import StageCollator
from kpod.data.load import load_data, template_from
from kpod.engine.distributed import make_accelerator
from kpod.engine.run import run_recipe
from kpod.engine.train import Trainer
from kpod.losses.mcc_kd import MccKdLoss
from kpod.models.student import load_student
from kpod.runs import MetricsWriter
from kpod.schedulers.base import CurriculumPlan
from tests.helpers import deep_update, tiny_recipe, train_events

MCC = {"data": {"source": {"params": {"n_train": 24, "rationales_per_question": 3, "wrong_rationale_rate": 0.3}},
                "format": {"name": "mcc_kd", "params": {"k": 2}}},
       "loss": {"name": "mcc_kd", "params": {"alpha": 0.5}}, "weighting": {"name": "uniform"},
       "scheduler": {"name": "none"}}


def test_tiny_mcc_kd_run_with_grouped_batches(tmp_path):
    recipe = tiny_recipe(**MCC, train={"epochs": 1, "batch_size": 8, "group_by_question": True},
                         eval={"splits": ["test"], "max_new_tokens": 8})
    run_recipe(recipe, tmp_path / "run")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["finished"] is True
    fmt = summary["data_report"]["format"]
    assert fmt["name"] == "mcc_kd" and fmt["train"]["questions"] == 24 and fmt["train"]["kept"] <= 48
    events = train_events(tmp_path / "run")
    assert events and all(e["extra_term"] >= 0 for e in events) and any(e["extra_term"] > 0 for e in events)


def test_mcc_kd_needs_grouped_batches(tmp_path):
    recipe = tiny_recipe(**MCC, train={"epochs": 1, "batch_size": 8}, eval={"splits": []})
    with pytest.raises(ValueError, match="set train.group_by_question: true"):
        run_recipe(recipe, tmp_path / "run")


def _first_window_grad(tmp_path, batch_size: int, grad_accum: int, alpha: float) -> dict[str, torch.Tensor]:
    exact = deep_update(MCC, {"data": {"source": {"params": {"wrong_rationale_rate": 0.0}}}})  # 2 records per question
    recipe = tiny_recipe(**exact, train={"batch_size": batch_size, "grad_accum": grad_accum, "group_by_question": True})
    train = load_data(recipe)["train"]
    template = template_from(recipe)
    student = load_student(recipe.student, [template.serialize(r).text for r in train], seed=0)
    run_dir = tmp_path / f"{batch_size}-{grad_accum}-{alpha}"
    trainer = Trainer(
        model=student.model, is_encoder_decoder=False, collator=StageCollator(train, template, student.tokenizer, False),
        loss_fn=MccKdLoss(MccKdLoss.Params(alpha=alpha)), plan=CurriculumPlan(),
        train_ids=[r.sample_id for r in train], cfg=recipe.train, seed=0, run_dir=run_dir,
        accelerator=make_accelerator("fp32"), metrics=MetricsWriter(run_dir / "m.jsonl", enabled=False),
    )
    captured: dict[str, torch.Tensor] = {}
    trainer.optimizer.step = lambda: captured.update(  # the gradient the step would apply
        {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None})
    window = trainer._micro_batches(1)[:grad_accum]
    trainer._window([trainer.collate(ids, None) for ids in window])
    return captured


def test_accumulation_gives_the_gradient_of_one_larger_batch(tmp_path):
    # questions of exactly 2 records (k = 2 of 3 correct ones): 8 rows = 4 whole questions = 2 × 4 rows
    one = _first_window_grad(tmp_path, 8, 1, alpha=5.0)
    two = _first_window_grad(tmp_path, 4, 2, alpha=5.0)
    ce_only = _first_window_grad(tmp_path, 8, 1, alpha=0.0)
    assert one.keys() == two.keys()
    for n in one:
        torch.testing.assert_close(one[n], two[n], rtol=1e-4, atol=1e-6)
    assert any(not torch.allclose(one[n], ce_only[n], atol=1e-7) for n in one)  # the term is in it
