"""``trained:RECIPE`` model names: the first use trains the recipe and caches the run (without
checkpoints) under $KPOD_CACHE/trained; later uses load it without training; another recipe is
another entry; a missing recipe file is an error naming it."""

from __future__ import annotations

import json

import pytest
import torch

import kpod.engine  # noqa: F401  (registers trained:)
from kpod.engine import run as engine_run
from kpod.models.student import load_model_ref
from kpod.recipe import RecipeError, dump_recipe
from tests.helpers import tiny_recipe


def test_a_trained_model_is_built_once_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("KPOD_CACHE", str(tmp_path / "cache"))
    recipe = tmp_path / "teacher.yaml"
    teacher = tiny_recipe(loss={"name": "std_cot"}, train={"epochs": 1}, eval={"splits": ["validation"], "max_new_tokens": 8})
    recipe.write_text(dump_recipe(teacher), encoding="utf-8")
    torch.manual_seed(123)
    threads = torch.get_num_threads()
    state = torch.get_rng_state()
    first = load_model_ref(f"trained:{recipe}", "loss.params.teacher_model")
    assert torch.equal(torch.get_rng_state(), state) and torch.get_num_threads() == threads  # the caller's state kept
    [entry] = list((tmp_path / "cache" / "trained").iterdir())
    info = json.loads((entry / "trained.json").read_text())
    assert info["recipe"] == str(recipe) and set(info["accuracy"]) == {"validation"}
    assert (entry / "run" / "model").is_dir() and not (entry / "run" / "checkpoints").exists()

    def no_training(*a, **k):
        raise AssertionError("trained again")

    monkeypatch.setattr(engine_run, "run_recipe", no_training)
    again = load_model_ref(f"trained:{recipe}", "loss.params.teacher_model")
    for a, b in zip(first.model.parameters(), again.model.parameters()):
        assert torch.equal(a, b)
    assert first.tokenizer.get_vocab() == again.tokenizer.get_vocab()
    recipe.write_text(dump_recipe(tiny_recipe(loss={"name": "std_cot"}, train={"epochs": 2})), encoding="utf-8")
    with pytest.raises(AssertionError, match="trained again"):  # another recipe: another entry, trained
        load_model_ref(f"trained:{recipe}", "loss.params.teacher_model")


def test_a_missing_recipe_is_an_error_naming_it(tmp_path):
    with pytest.raises(RecipeError, match="nowhere.yaml"):
        load_model_ref(f"trained:{tmp_path / 'nowhere.yaml'}", "loss.params.teacher_model")
