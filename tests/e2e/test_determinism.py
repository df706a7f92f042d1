"""What kpod promises about reproducibility (docs/reliability.md, "Determinism"): on one machine,
with the same torch build, thread count (train.threads) and seed, a run is bitwise repeatable —
weights fitted, plan, every logged loss, the selected step, the saved model and every prediction.
Nothing is promised across machines or thread counts (float reductions run in another order)."""

from __future__ import annotations

import json

from kpod.engine.run import run_recipe
from tests.helpers import KPOD_TINY, tiny_recipe


def _outputs(run_dir):
    events = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [(e["step"], e["loss"], e["ce_rationale"], e["grad_norm"]) for e in events if e.get("phase") == "train"]
    evals = [(e["split"], e["step"], e["accuracy"]) for e in events if e.get("phase") == "eval"]
    return {
        "losses": losses,
        "evals": evals,
        "plan": (run_dir / "plan.json").read_text(),
        "predictions": (run_dir / "predictions.jsonl").read_text(),
        "model": (run_dir / "model" / "model.safetensors").read_bytes(),
    }


def test_same_machine_same_threads_same_seed_is_bitwise_repeatable(tmp_path, monkeypatch):
    recipe = tiny_recipe(**{**KPOD_TINY, "train": {**KPOD_TINY["train"], "threads": 1}},
                         eval={"splits": ["validation", "test"], "max_new_tokens": 16})
    outs = []
    for name in ("a", "b"):  # separate caches: the mask-learning fit runs again too
        monkeypatch.setenv("KPOD_CACHE", str(tmp_path / f"cache-{name}"))
        summary = run_recipe(recipe, tmp_path / name, quiet=True)
        assert summary["weighting"]["cache_hit"] is False
        outs.append((_outputs(tmp_path / name), summary["selection"], summary["splits"]))
    (a, sel_a, acc_a), (b, sel_b, acc_b) = outs
    for key in a:
        assert a[key] == b[key], key
    assert (sel_a["step"], sel_a["score"]) == (sel_b["step"], sel_b["score"])
    assert acc_a == acc_b
