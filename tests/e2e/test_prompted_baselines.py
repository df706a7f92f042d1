"""recipes/baselines/{dsbs,specialized_kd,scott}.yaml end to end with tiny overrides: the method's
examples are trained on, and evaluation prompts (and reads the answer from) the right task."""

from __future__ import annotations

import json
import math

import pytest

from kpod.engine.run import run_recipe
from kpod.recipe import load_recipe

TINY = [
    "data.source.params={n_train: 24, n_validation: 6, n_test: 0, n_ood: 0, max_steps: 3}",
    "student.pretrain=null",
    "student.tiny={hidden_size: 32, num_layers: 1, num_heads: 2, intermediate_size: 64}",
    "student.tokenizer.vocab_size=200",
    "train.epochs=1", "train.warmup_steps=0", "train.log_every=1", "train.threads=1",
    "eval.splits=[validation]", "eval.max_new_tokens=16", "eval.batch_size=8",
]

CASES = {
    # recipe: (batch size, what the evaluation prompt starts with, what it ends with, train examples per question)
    "dsbs": (8, "Q: predict: ", " A:", 2),
    "specialized_kd": (16, "Q: ", " A: Let's think step by step.", 4),
    "scott": (8, "Q: [factual] ", " A: Let's think step by step.", None),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_baseline_recipe_trains_and_evaluates_its_task(name, tmp_path, monkeypatch):
    monkeypatch.setenv("KPOD_CACHE", str(tmp_path / "cache"))
    bs, starts, ends, per_question = CASES[name]
    extra = ["data.format.params.n_demos=1"] if name == "specialized_kd" else []  # the tiny tokenizer's longer texts
    recipe = load_recipe(f"recipes/baselines/{name}.yaml", [*TINY, f"train.batch_size={bs}", *extra])
    summary = run_recipe(recipe, tmp_path / "run", quiet=True)
    run = tmp_path / "run"
    fmt = summary["data_report"]["format"]
    assert fmt["name"] == name and fmt["records_in"]["train"] == 24
    if per_question is not None:
        assert fmt["records"]["train"] == 24 * per_question
    else:  # SCOTT: one factual example per question, one counterfactual unless none could be made
        assert fmt["records"]["train"] == 24 + fmt["counterfactuals"]
        assert fmt["counterfactuals"] + fmt["no_counterfactual"]["count"] == 24 and fmt["counterfactuals"] > 0
    events = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [e["loss"] for e in events if e.get("phase") == "train"]
    assert losses and all(math.isfinite(x) for x in losses)
    preds = [json.loads(x) for x in (run / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 6 and {p["split"] for p in preds} == {"validation"}
    for p in preds:
        assert "#" not in p["sample_id"]  # evaluation records keep the source's ids
        assert p["prompt"].startswith(starts) and p["prompt"].endswith(ends), p["prompt"]
        assert "parsed" in p and "output" in p
