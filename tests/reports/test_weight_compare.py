"""``kpod weights RECIPE --compare``: every strategy scored on the same records, one table."""

from __future__ import annotations

import json

import yaml
from typer.testing import CliRunner

from kpod.cli import app
from tests.helpers import TINY, deep_update

runner = CliRunner()
ML = {"name": "mask_learning", "params": {
    "predictor": "tiny:llama", "predictor_tiny": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64},
    "predictor_warmup_steps": 2, "max_steps": 2, "batch_size": 8, "heads": 2, "mlp_hidden": 16},
    "select": {"policy": "top_k", "k": 0.3}}


def test_compare_scores_each_strategy_on_the_same_records(tmp_path, monkeypatch):
    monkeypatch.setenv("KPOD_CACHE", str(tmp_path / "cache"))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(deep_update(TINY, {"weighting": ML, "loss": {"name": "kpod"}})))
    out = tmp_path / "cmp.json"
    res = runner.invoke(app, ["weights", str(recipe), "--out", str(out), "-q",
                              "--only", "mask_learning,oracle,dft,uniform,precomputed"])
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    rows = {r["strategy"]: r for r in doc["rows"]}
    assert list(rows) == ["mask_learning", "oracle", "dft", "uniform", "precomputed"]
    assert doc["select"] == {"policy": "top_k", "k": 0.3}
    # the recipe's own strategy with its params; the others under the same selection policy
    assert rows["mask_learning"]["kind"] == "static" and 0 <= rows["mask_learning"]["auc"] <= 1
    assert rows["oracle"]["auc"] == 1.0 and rows["oracle"]["auc_number"] == 1.0
    assert rows["dft"]["kind"].startswith("dynamic") and rows["dft"]["auc"] is not None
    # top_k 0.3 keeps about 30 % of the tokens (uniform: ties, so each rationale's first 30 %)
    for name in ("mask_learning", "oracle", "dft", "uniform"):
        assert 0.28 <= rows[name]["kept_ratio"] <= 0.4, rows[name]
    assert rows["uniform"]["auc"] == 0.5  # the signal's AUC: no signal
    assert "Field required" in rows["precomputed"]["skipped"]
    assert "| oracle | static | 1.000 |" in res.output and "precomputed: skipped" in res.output


def test_compare_scores_dynamic_signals_for_a_recipe_whose_loss_ignores_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("KPOD_CACHE", str(tmp_path / "cache"))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(deep_update(TINY, {"loss": {"name": "std_cot"}})))  # as recipes/std_cot.yaml
    res = runner.invoke(app, ["weights", str(recipe), "--out", str(tmp_path / "c.json"), "-q", "--compare",
                              "--only", "dft,entropy"])
    assert res.exit_code == 0, res.output
    rows = {r["strategy"]: r for r in json.loads((tmp_path / "c.json").read_text())["rows"]}
    assert all(rows[n]["kind"].startswith("dynamic") and rows[n]["auc"] is not None for n in ("dft", "entropy"))


def test_compare_with_an_unknown_strategy_exits_2_naming_it(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(TINY))
    res = runner.invoke(app, ["weights", str(recipe), "--out", str(tmp_path / "c.json"), "--only", "orcale"])
    assert res.exit_code == 2 and "oracle" in res.output and not (tmp_path / "c.json").exists()


def test_weights_export_of_a_dynamic_strategy_shows_its_signal_under_the_initial_student(tmp_path, monkeypatch):
    monkeypatch.setenv("KPOD_CACHE", str(tmp_path / "cache"))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(deep_update(TINY, {"weighting": {"name": "dft"}, "loss": {"name": "kpod"}})))
    res = runner.invoke(app, ["weights", str(recipe), "--out", str(tmp_path / "w.jsonl"), "-q"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(x) for x in (tmp_path / "w.jsonl").read_text().splitlines()]
    ws = [w for r in rows for w, (s, e) in zip(r["weights"], r["offsets"]) if e > s]
    assert len(rows) == 96 and all(0.0 < w < 1.0 for w in ws) and len(set(ws)) > 10  # p(y_t), not uniform 1
