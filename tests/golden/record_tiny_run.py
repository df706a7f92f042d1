"""Records (or checks) the tiny end-to-end run that pins kpod's behaviour across refactors.

``python -m tests.golden.record_tiny_run`` rewrites ``tiny_run.json``; the behaviour test
(tests/e2e/test_behaviour_unchanged.py) re-runs the same recipe and compares. The losses, plan,
selection and predictions in the file were recorded at commit 6f6a46d, before the engine was
cut into phases, with torch 2.13.0 on CPU and one thread; the difficulties and clusters were added later
from a run that reproduced all of those.

Another CPU (vector width, scalar kernels, thread count) rounds differently, so the test compares
floats within tolerances, and it compares a discrete outcome exactly only where rounding cannot
flip it:

* **The plan.** This run's student is barely trained, so its step difficulties are close together
  and the knapsack plan flips under a relative perturbation of 3e-5. The test therefore checks
  the difficulties against the recording within a tolerance and then hands the scheduler the
  *recorded* difficulties (:class:`RunSpy`): the plan is then a pure function of recorded inputs
  and is compared exactly.
* **The predictions.** Every greedy choice of the final evaluation must win by at least
  ``MIN_GREEDY_MARGIN`` logits (the spy measures it); cross-CPU rounding moves these logits by
  about 1e-5, so the outputs are compared exactly.
"""

from __future__ import annotations

import dataclasses
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

# Smallest top-1 minus top-2 logit gap a greedy choice of the final evaluation may have for the
# predictions to be compared exactly: 100x the ~1e-5 by which CPUs' roundings move the logits.
MIN_GREEDY_MARGIN = 1e-3


@dataclasses.dataclass
class RunSpy:
    """What the run fed its knapsack scheduler and how clearly its final greedy choices won.

    With ``recorded_difficulties`` set, the scheduler plans from those instead of the run's own
    (which the spy still keeps, for the caller to compare)."""

    recorded_difficulties: dict[str, list[float]] | None = None
    difficulties: dict[str, list[float]] | None = None
    clusters: dict[str, int] | None = None
    final_greedy_margin: float = float("inf")
    in_final_evaluation: bool = False


def spy_on_run(monkeypatch: Any, recorded_difficulties: dict[str, list[float]] | None = None) -> RunSpy:
    """Wraps the knapsack scheduler's ``plan``, the final evaluation and the greedy decoder's
    logits (with pytest's ``monkeypatch``, so the wrapping ends with the test)."""
    from kpod.engine import run as engine_run
    from kpod.eval import generate
    from kpod.schedulers.kpod_knapsack import KpodKnapsack

    spy = RunSpy(recorded_difficulties)
    plan, logits, evaluate_splits = KpodKnapsack.plan, generate.CausalStream.logits, engine_run.evaluate_splits

    def plan_spied(self: Any, inputs: Any) -> Any:
        spy.difficulties, spy.clusters = inputs.difficulties, inputs.clusters
        if spy.recorded_difficulties is not None:
            inputs = dataclasses.replace(inputs, difficulties=spy.recorded_difficulties)
        return plan(self, inputs)

    def logits_spied(self: Any) -> Any:
        out = logits(self)
        if spy.in_final_evaluation:
            top2 = out.float().topk(2, dim=-1).values
            spy.final_greedy_margin = min(spy.final_greedy_margin, float((top2[:, 0] - top2[:, 1]).min()))
        return out

    def evaluate_splits_spied(*args: Any, **kwargs: Any) -> Any:
        spy.in_final_evaluation = True
        try:
            return evaluate_splits(*args, **kwargs)
        finally:
            spy.in_final_evaluation = False

    monkeypatch.setattr(KpodKnapsack, "plan", plan_spied)
    monkeypatch.setattr(generate.CausalStream, "logits", logits_spied)
    monkeypatch.setattr(engine_run, "evaluate_splits", evaluate_splits_spied)
    return spy


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
    import pytest

    with tempfile.TemporaryDirectory() as d, pytest.MonkeyPatch.context() as mp:
        os.environ["KPOD_CACHE"] = str(Path(d) / "cache")
        spy = spy_on_run(mp)
        got = run_tiny(Path(d))
    got["difficulties"], got["clusters"] = spy.difficulties, spy.clusters
    GOLDEN.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN} ({len(got['train'])} train events); smallest greedy margin of the final "
          f"evaluation {spy.final_greedy_margin:.4f} (the test needs >= {MIN_GREEDY_MARGIN})", file=sys.stderr)
