"""A resumed run never lists a selection evaluation twice: killed right after an epoch end's
evaluation (which runs after the checkpoint of the epoch's last step), the resume evaluates that
step again, so the first evaluation's log line goes."""

from __future__ import annotations

import json

import yaml
from typer.testing import CliRunner

from kpod.cli import app
from tests.e2e.test_reliability_runs import RECIPE, kill_at
from tests.helpers import deep_update

runner = CliRunner()


def test_a_kill_after_an_epoch_end_evaluation_does_not_repeat_it(tmp_path):
    # 12 steps per epoch, a checkpoint every 4: step 12's checkpoint is written, then the epoch
    # boundary evaluates step 12; the kill comes after step 13, before the next checkpoint
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(deep_update(RECIPE, {"eval": {"select_on": "validation", "splits": ["test"]}})))
    out = tmp_path / "run"
    kill_at("after-step:13", recipe, out, tmp_path / "log")
    events = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if e.get("during_training")] == [12]  # evaluated after checkpoint 12
    res = runner.invoke(app, ["run", str(recipe), "--out", str(out), "-q", "--resume"])
    assert res.exit_code == 0, res.output
    events = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    evaluated = [e["step"] for e in events if e.get("during_training")]
    assert evaluated == [12, 24]  # each once
    summary = json.loads((out / "summary.json").read_text())
    assert [e["step"] for e in summary["selection"]["evaluations"]] == [12, 24]
    assert [e["step"] for e in events if e["phase"] == "train"] == list(range(1, 25))
