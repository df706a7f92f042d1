"""The distillation loop offline, end to end: a trained tiny model is the teacher, ``kpod rescore``
stores its top-k on the training rationales, a student trains with the ``kd`` loss on them
(packed, chunked), a second rescoring resumes instead of scoring again, and gradient accumulation
gives the loss's step the gradient of one big batch."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from kpod.cli import app
from kpod.data.load import load_data
from kpod.engine.run import run_recipe
from kpod.recipe import dump_recipe
from tests.helpers import first_step_grads, make_trainer, tiny_recipe, train_events


@pytest.fixture(scope="module")
def teacher_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("kd")
    run_recipe(tiny_recipe(loss={"name": "std_cot"}, train={"epochs": 2}), root / "teacher")
    recipe_file = root / "recipe.yaml"
    recipe_file.write_text(dump_recipe(tiny_recipe()), encoding="utf-8")
    store = root / "store"
    result = CliRunner().invoke(app, ["rescore", str(recipe_file), "--teacher", str(root / "teacher" / "model"),
                                      "--out", str(store), "--top-k", "8"])
    assert result.exit_code == 0, result.output
    assert "96 rationales" in result.output
    return store


def test_a_student_trains_on_the_stored_teacher_distributions(teacher_store, tmp_path):
    recipe = tiny_recipe(loss={"name": "kd", "params": {"teacher_store": str(teacher_store), "alpha": 0.5}},
                         train={"epochs": 1, "packing": True, "loss_chunk_tokens": 16})
    run_recipe(recipe, tmp_path / "run")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["finished"] is True and summary["loss"] == "kd"
    losses = [e["loss"] for e in train_events(tmp_path / "run")]
    assert len(losses) == 6 and losses[-1] < losses[0]  # 96 / 16 steps, and it learns


def test_rescoring_again_scores_nothing_new(teacher_store, tmp_path):
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(dump_recipe(tiny_recipe()), encoding="utf-8")
    teacher = teacher_store.parent / "teacher" / "model"
    result = CliRunner().invoke(app, ["rescore", str(recipe_file), "--teacher", str(teacher), "--out", str(teacher_store),
                                      "--top-k", "8"])
    assert result.exit_code == 0 and "(0 scored now, 96 already there)" in result.output, result.output
    result = CliRunner().invoke(app, ["rescore", str(recipe_file), "--teacher", str(teacher), "--out", str(teacher_store),
                                      "--top-k", "4"])
    assert result.exit_code == 2 and "k: stored 8, asked 4" in result.output, result.output


def test_a_student_trains_beside_an_online_teacher(teacher_store, tmp_path):
    teacher = teacher_store.parent / "teacher"  # a run directory: its model/
    recipe = tiny_recipe(loss={"name": "kd", "params": {"teacher_model": str(teacher), "alpha": 0.5}},
                         train={"epochs": 1, "packing": True, "loss_chunk_tokens": 16})
    run_recipe(recipe, tmp_path / "run")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["finished"] is True and summary["train"]["packing"] == "on"
    losses = [e["loss"] for e in train_events(tmp_path / "run")]
    assert len(losses) == 6 and losses[-1] < losses[0]


@pytest.mark.parametrize("teacher", ["teacher_store", "teacher_model"])
def test_accumulated_micro_batches_equal_one_big_batch_with_keypoint_weighted_kd(teacher_store, tmp_path, teacher):
    """Σ(w·ℓ)/Σw over the window for the kd loss: 4 micro-batches of 4 == 1 batch of 16, with uneven
    token weights (keypoint-weighted KD), from the stored top-k or beside the online teacher."""
    source = str(teacher_store) if teacher == "teacher_store" else str(teacher_store.parent / "teacher")
    loss = {"name": "kd", "params": {teacher: source, "alpha": 0.7, "divergence": "jsd", "weights": "weighted"}}
    big = tiny_recipe(loss=loss, train={"batch_size": 16, "grad_accum": 1, "grad_clip": None})
    small = tiny_recipe(loss=loss, train={"batch_size": 4, "grad_accum": 4, "grad_clip": None})
    records = load_data(big)["train"]
    weights = {r.sample_id: [(0, len(r.rationale) // 2, 0.1 if i % 3 == 0 else 0.9)] for i, r in enumerate(records)}
    gb = first_step_grads(make_trainer(big, tmp_path / "big", weights)[0])
    gs = first_step_grads(make_trainer(small, tmp_path / "small", weights)[0])
    assert len(gb) == len(gs) > 0
    for a, b in zip(gb, gs):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
