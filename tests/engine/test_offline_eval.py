"""`kpod eval`: a saved model evaluated after the fact gives the run's own predictions and accuracy
(run directory, model directory, LoRA adapter run), and other data through --data."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from kpod.cli import app
from kpod.data.load import load_data
from kpod.engine.offline_eval import evaluate_saved
from kpod.engine.run import run_recipe
from kpod.recipe import RecipeError
from tests.helpers import tiny_recipe

EVAL = {"splits": ["validation", "test"], "max_new_tokens": 24, "batch_size": 3}


def _preds(path):
    return {p["sample_id"]: p for p in map(json.loads, path.read_text().splitlines())}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("eval") / "run"
    run_recipe(tiny_recipe(train={"epochs": 3}, eval=EVAL), run, quiet=True)
    return run


def test_eval_of_a_run_directory_reproduces_the_run(run_dir, tmp_path):
    summary = json.loads((run_dir / "summary.json").read_text())
    got = evaluate_saved(run_dir, out_dir=tmp_path / "ev", quiet=True)
    assert set(got["splits"]) == {"validation", "test"}
    for split in ("validation", "test"):
        assert got["splits"][split] == summary["splits"][split]
    # the same generations, question by question (same template, extractor, batches)
    ran, again = _preds(run_dir / "predictions.jsonl"), _preds(tmp_path / "ev" / "predictions.jsonl")
    assert ran.keys() == again.keys()
    for sid, p in ran.items():
        assert (again[sid]["output"], again[sid]["prompt"], again[sid]["correct"]) == (p["output"], p["prompt"], p["correct"])
    assert json.loads((tmp_path / "ev" / "summary.json").read_text())["splits"] == got["splits"]


def test_eval_of_a_model_directory_with_a_recipe(run_dir, tmp_path):
    summary = json.loads((run_dir / "summary.json").read_text())
    moved = tmp_path / "somewhere" / "model"
    shutil.copytree(run_dir / "model", moved)
    with pytest.raises(RecipeError, match="--recipe"):
        evaluate_saved(moved, quiet=True)
    got = evaluate_saved(moved, run_dir / "recipe.resolved.yaml", splits=["test"], out_dir=tmp_path / "ev", quiet=True)
    assert list(got["splits"]) == ["test"]
    assert got["splits"]["test"] == summary["splits"]["test"]


def test_eval_on_other_data_keeps_template_and_extractor(run_dir, tmp_path):
    """The run's test questions as a local file under new ids: the same answers, keyed by the new ids."""
    recipe = tiny_recipe(train={"epochs": 3}, eval=EVAL)
    test = load_data(recipe)["test"]
    path = tmp_path / "other.jsonl"
    path.write_text("".join(json.dumps({"id": f"other-{i}", "question": r.question, "rationale": r.rationale, "answer": r.answer}) + "\n"
                            for i, r in enumerate(test)))
    got = evaluate_saved(run_dir, data=[str(path)], splits=["test"], out_dir=tmp_path / "ev", quiet=True)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert got["splits"]["other/test"]["accuracy"] == summary["splits"]["test"]["accuracy"]
    preds = _preds(tmp_path / "ev" / "predictions.jsonl")
    assert len(preds) == len(test) and all(sid.startswith("other/test/") for sid in preds)  # the file's own ids
    ran = [p["output"] for p in _preds(run_dir / "predictions.jsonl").values() if p["split"] == "test"]
    assert sorted(ran) == sorted(p["output"] for p in preds.values())
    assert {p["split"] for p in preds.values()} == {"other/test"}


def test_eval_cli_and_its_errors(run_dir, tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["eval", str(run_dir), "--split", "test", "--out", str(tmp_path / "ev"), "-q"])
    assert res.exit_code == 0, res.output
    assert "test" in res.output and (tmp_path / "ev" / "predictions.jsonl").exists()
    res = runner.invoke(app, ["eval", str(run_dir), "--split", "nope", "--out", str(tmp_path / "ev2"), "-q"])
    assert res.exit_code == 2 and "--split nope" in res.output
    res = runner.invoke(app, ["eval", str(tmp_path / "missing"), "-q"])
    assert res.exit_code == 2 and "no such run or model directory" in res.output
    res = runner.invoke(app, ["eval", str(run_dir), "--data", "nosuchsource", "-q"])
    assert res.exit_code == 2 and "--data 'nosuchsource'" in res.output
    # LABEL:FILE with a label that is not a source name: the local file, under that label
    data = tmp_path / "test.jsonl"
    data.write_text(json.dumps({"question": "Tom has 2 apples and buys 3. How many?", "rationale": "2 + 3 = 5.",
                                "answer": "5"}) + "\n")
    res = runner.invoke(app, ["eval", str(run_dir), "--data", f"chain:{data}", "--out", str(tmp_path / "ev3"), "-q"])
    assert res.exit_code == 0, res.output
    assert set(json.loads((tmp_path / "ev3" / "summary.json").read_text())["splits"]) == {"chain/test"}
    res = runner.invoke(app, ["eval", str(run_dir), "--data", f"chain:{tmp_path / 'nope.jsonl'}", "-q"])
    assert res.exit_code == 2 and "'chain' is not a data source" in " ".join(res.output.split())


def test_eval_of_a_lora_adapter_run(tmp_path):
    pytest.importorskip("peft")
    run = tmp_path / "lora"
    recipe = tiny_recipe(student={"lora": {"rank": 4, "alpha": 8.0, "dropout": 0.0}}, train={"epochs": 2, "lr": 2e-2},
                         eval={"splits": ["test"], "max_new_tokens": 16})
    summary = run_recipe(recipe, run, quiet=True)
    assert (run / "model" / "adapter_config.json").exists()
    got = evaluate_saved(run, out_dir=tmp_path / "ev", quiet=True)
    assert got["splits"]["test"] == summary["splits"]["test"]
    ran, again = _preds(run / "predictions.jsonl"), _preds(tmp_path / "ev" / "predictions.jsonl")
    assert {k: p["output"] for k, p in ran.items()} == {k: p["output"] for k, p in again.items()}
