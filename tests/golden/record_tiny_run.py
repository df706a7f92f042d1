"""Records (or checks) the tiny end-to-end run that pins kpod's behaviour across refactors.

``python -m tests.golden.record_tiny_run`` rewrites ``tiny_run.json``; the behaviour test
(tests/e2e/test_behaviour_unchanged.py) re-runs the same recipe and compares. The file in the
repository was recorded at commit 6f6a46d, before the issue-16 refactor, with torch 2.13.0 on CPU
and one thread: a refactor that changes losses, plan, selection or predictions fails that test.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

GOLDEN = Path(__file__).with_name("tiny_run.json")

RECIPE_PATCH: dict[str, Any] = {
    "weighting": {"name": "mask_learning", "params": {
        "predictor": "tiny:llama",
        "predictor_tiny": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64},
        "predictor_warmup_steps": 2, "max_steps": 3, "batch_size": 8, "heads": 2, "mlp_hidden": 16}},
    "scheduler": {"name": "kpod_knapsack", "params": {"T": 2}},
    "clusters": {"k": 2, "restarts": 2},
    "loss": {"name": "kpod"},
    "train": {"epochs": 3, "threads": 1},
    "eval": {"splits": ["validation", "test"], "max_new_tokens": 16, "select_every_steps": 6},
}


def run_tiny(out: Path) -> dict[str, Any]:
    """Runs the pinned recipe in ``out`` and returns what must not change (the caller points
    ``KPOD_CACHE`` at an empty folder, so the mask-learning fit and difficulties run too)."""
    from kpod.engine.run import run_recipe
    from tests.helpers import tiny_recipe

    summary = run_recipe(tiny_recipe(**RECIPE_PATCH), out / "run", quiet=True)
    run = out / "run"
    events = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return {
        "train": [[e["step"], e["loss"], e["ce_rationale"], e["grad_norm"]]
                  for e in events if e.get("phase") == "train"],
        "evals": [[e["split"], e["step"], e["accuracy"]] for e in events if e.get("phase") == "eval"],
        "plan_stages": json.loads((run / "plan.json").read_text())["stages"],
        "predictions": [json.loads(x) for x in (run / "predictions.jsonl").read_text().splitlines()],
        "selection": {k: summary["selection"][k] for k in ("step", "score")},
        "splits": summary["splits"],
    }


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as d:
        os.environ["KPOD_CACHE"] = str(Path(d) / "cache")
        got = run_tiny(Path(d))
    GOLDEN.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN} ({len(got['train'])} train events)", file=sys.stderr)
