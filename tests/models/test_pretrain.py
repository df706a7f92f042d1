"""The pre-trained tiny base (student.pretrain): corpus, cache, rebuild, and use in a run."""

from __future__ import annotations

import json
import re

import pytest
import torch

from kpod.data.pretrain_corpus import pretraining_texts
from kpod.data.synthetic import FILLERS, ITEMS, generate_splits
from kpod.engine.run import run_recipe
from kpod.models import pretrain as pretrain_mod
from kpod.models.config import StudentConfig
from kpod.models.student import load_student
from kpod.recipe import RecipeError
from tests.helpers import tiny_recipe

SMALL = {
    "model": "tiny:llama",
    "tiny": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64},
    "tokenizer": {"vocab_size": 200},
    "pretrain": {"documents": 200, "steps": 6, "batch_size": 4, "seq_len": 32},
}


def test_corpus_is_general_text_not_the_distillation_data():
    docs = pretraining_texts(300, seed=0)
    assert docs == pretraining_texts(300, seed=0)  # deterministic for a seed
    assert docs != pretraining_texts(300, seed=1)
    text = " ".join(docs)
    # facts are there and they are right
    facts = re.findall(r"(\d+) \+ (\d+) = (\d+)", text)
    assert len(facts) > 20 and all(int(a) + int(b) == int(c) for a, b, c in facts)
    halves = re.findall(r"Half of (\d+) is (\d+)", text)
    assert halves and all(int(a) == 2 * int(b) for a, b in halves)
    # ... but no word problem, no rationale, no answer sentence of the training template
    assert "How many" not in text.replace("How many are there now? Let us count.", "")
    assert "the answer is" not in text.lower().replace("the answer is a whole number", "")
    questions = {r.question for split in generate_splits(
        seed=0, sizes={"train": 50, "validation": 0, "test": 0, "ood": 0}, min_steps=2, max_steps=4,
        ood_min_steps=5, ood_max_steps=6, max_value=60, max_operand=12, filler_prob=0.5,
    ).values() for r in split}
    assert not any(q in text for q in questions)


def test_base_is_built_once_then_read_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KPOD_CACHE", str(tmp_path / "cache"))
    calls = []
    real = pretrain_mod.pretrain_tiny
    monkeypatch.setattr(pretrain_mod, "pretrain_tiny", lambda *a, **k: calls.append(1) or real(*a, **k))
    cfg = StudentConfig.model_validate(SMALL)
    first = load_student(cfg, seed=0)
    second = load_student(cfg, seed=7)  # the recipe seed does not change the base
    assert len(calls) == 1
    for (name, a), (_, b) in zip(first.model.state_dict().items(), second.model.state_dict().items()):
        assert torch.equal(a, b), name
    assert first.tokenizer.get_vocab() == second.tokenizer.get_vocab()
    [entry] = list((tmp_path / "cache" / "pretrained").iterdir())
    info = json.loads((entry / "base.json").read_text())
    assert info["final_loss"] < info["first_loss"]  # it learned something
    # a different pre-training config is a different base
    other = StudentConfig.model_validate({**SMALL, "pretrain": {**SMALL["pretrain"], "steps": 7}})
    load_student(other)
    assert len(calls) == 2


def test_rebuilt_base_is_identical(tmp_path):
    cfg = StudentConfig.model_validate(SMALL)
    torch.set_num_threads(1)
    a = pretrain_mod.pretrain_tiny(cfg.model, cfg.tiny, cfg.tokenizer, cfg.pretrain, str(tmp_path / "a"))
    b = pretrain_mod.pretrain_tiny(cfg.model, cfg.tiny, cfg.tokenizer, cfg.pretrain, str(tmp_path / "b"))
    assert a["final_loss"] == b["final_loss"]
    for name in ("model.safetensors", "tokenizer.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_pretrain_is_rejected_for_models_kpod_cannot_pretrain():
    with pytest.raises(ValueError, match="pretrain: only a tiny:llama"):
        StudentConfig.model_validate({**SMALL, "model": "tiny:t5"})
    with pytest.raises(RecipeError, match="student: .*pretrain: only a tiny:llama"):
        tiny_recipe(student={"model": "some/hub-model", "pretrain": {}})


def test_run_starts_from_the_pretrained_base(tmp_path, monkeypatch):
    monkeypatch.setenv("KPOD_CACHE", str(tmp_path / "cache"))
    recipe = tiny_recipe(student=SMALL, train={"epochs": 1, "max_steps": 2})
    run_recipe(recipe, tmp_path / "run", quiet=True)
    [entry] = list((tmp_path / "cache" / "pretrained").iterdir())
    # the run's tokenizer is the base's (trained on the pre-training corpus, not on the data)
    saved = json.loads((tmp_path / "run" / "tokenizer" / "tokenizer.json").read_text())
    base = json.loads((entry / "tokenizer.json").read_text())
    assert saved["model"]["vocab"] == base["model"]["vocab"]


# --- the fluent base (student.pretrain.corpus: rationale_style) ---------------------------------

STEP = re.compile(r"(?:First, we|Then we|" + "|".join(map(re.escape, FILLERS)) + r") (.+?), so (\d+) ([-+*/]) (\d+) = (\d+) (\w+)\.")
APPLY = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "/": lambda a, b: a // b}


def _generated(seed: int, n: int = 200) -> list:
    return [r for split in generate_splits(
        seed=seed, sizes={"train": n, "validation": 20, "test": 20, "ood": 20}, min_steps=2, max_steps=5,
        ood_min_steps=6, ood_max_steps=7, max_value=60, max_operand=12, filler_prob=0.5,
    ).values() for r in split]


@pytest.mark.parametrize("seed", range(8))
def test_fluent_corpus_speaks_the_rationales_language_but_holds_no_problem_chain_or_answer(seed):
    docs = pretraining_texts(400, seed=seed, corpus="rationale_style")
    assert docs == pretraining_texts(400, seed=seed, corpus="rationale_style")
    text = " ".join(docs)
    steps_per_doc = [STEP.findall(d) for d in docs]
    steps = [s for doc in steps_per_doc for s in doc]
    assert len(steps) > 400  # about a third of the sentences
    for action, a, sym, b, c, item in steps:  # every step is right, in the generator's frame
        assert APPLY[sym](int(a), int(b)) == int(c) and item in ITEMS and item in action
        assert sym != "/" or int(a) % 2 == 0
    # the generator's own step sentences are in it: its frames, with another quantity
    records = _generated(seed)
    frames = {re.sub(r"\d+", "N", s) for r in records for s in STEP.findall(r.rationale) for s in [" ".join(s)]}
    assert len(frames & {re.sub(r"\d+", "N", " ".join(s)) for s in steps}) > 20
    # ... but no chain: within a document no two steps share an item (a chain carries one item)
    for doc in steps_per_doc:
        items = [s[5] for s in doc]
        assert len(items) == len(set(items))
    # ... no word problem, no answer sentence, no question of the data set
    assert "How many" not in text.replace("How many are there now? Let us count.", "")
    assert "the answer is" not in text.lower().replace("the answer is a whole number", "")
    assert not any(r.question in text or r.rationale in text for r in records)
    for r in records:  # no two consecutive steps of any generated rationale appear together
        sents = [" ".join(s) for s in STEP.findall(r.rationale)]
        assert not any(f"{x} {y}" in text for x, y in zip(sents, sents[1:]))


def test_fluent_base_is_built_once_apart_from_the_default_base(tmp_path, monkeypatch):
    monkeypatch.setenv("KPOD_CACHE", str(tmp_path / "cache"))
    calls = []
    real = pretrain_mod.pretrain_tiny
    monkeypatch.setattr(pretrain_mod, "pretrain_tiny", lambda *a, **k: calls.append(a[3].corpus) or real(*a, **k))
    fluent = StudentConfig.model_validate({**SMALL, "pretrain": {**SMALL["pretrain"], "corpus": "rationale_style"}})
    default = StudentConfig.model_validate(SMALL)
    load_student(fluent)
    load_student(default)
    load_student(fluent, seed=3)
    assert calls == ["rationale_style", "arith_facts"]  # each built once, the second fluent load a cache hit
    assert pretrain_mod.base_path(fluent, tmp_path / "cache") != pretrain_mod.base_path(default, tmp_path / "cache")
