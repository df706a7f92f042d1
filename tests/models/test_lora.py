"""LoRA through peft: only adapters train, the adapter is saved, reloads with the same outputs,
merges into a plain model, and checkpoints hold only what training changes."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("peft")

from kpod.data.load import load_data, template_from  # noqa: E402
from kpod.engine.run import run_recipe  # noqa: E402
from kpod.eval.answers import NumericExtractor  # noqa: E402
from kpod.eval.generate import evaluate_split  # noqa: E402
from kpod.models.student import StudentError, export_merged, is_peft, load_saved  # noqa: E402
from kpod.recipe import RecipeError  # noqa: E402
from tests.helpers import tiny_recipe, train_events  # noqa: E402

LORA = {"rank": 4, "alpha": 8.0, "dropout": 0.0}


def _recipe(**patch):
    base = {
        "student": {"lora": LORA},
        "train": {"epochs": 2, "lr": 2e-2, "checkpoint_every": 3},
        "eval": {"splits": ["validation"], "max_new_tokens": 16},
    }
    base.update(patch)
    return tiny_recipe(**base)


def test_lora_trains_adapters_only_saves_and_reloads_with_same_outputs(tmp_path):
    recipe = _recipe()
    run = tmp_path / "run"
    summary = run_recipe(recipe, run, quiet=True)
    losses = [e["loss"] for e in train_events(run)]
    assert losses[-1] < losses[0]

    # the adapter directory: config + weights, no full model
    model_dir = run / "model"
    cfg = json.loads((model_dir / "adapter_config.json").read_text())
    assert cfg["r"] == 4 and cfg["lora_alpha"] == 8.0
    assert sorted(cfg["target_modules"]) == ["k_proj", "o_proj", "q_proj", "v_proj"]  # the LLaMA-family default
    assert not (model_dir / "model.safetensors").exists()

    # checkpoints keep only trainable tensors (the frozen base is rebuilt from the seed / hub)
    ckpt = sorted((run / "checkpoints").iterdir())[-1]
    keys = torch.load(ckpt / "model.pt", weights_only=True).keys()
    assert keys and all("lora_" in k for k in keys), sorted(keys)[:5]

    # reload base + adapter and regenerate the validation predictions exactly
    student = load_saved(model_dir)
    assert is_peft(student.model)
    trainable = [n for n, p in student.model.named_parameters() if "lora_" in n]
    assert trainable
    splits = load_data(recipe)
    res, preds = evaluate_split(
        student.model, student.tokenizer, splits["validation"], template_from(recipe), NumericExtractor(),
        False, batch_size=8, max_new_tokens=16, device=torch.device("cpu"), split="validation",
    )
    saved = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    assert [p["output"] for p in preds] == [p["output"] for p in saved]
    assert res["accuracy"] == summary["splits"]["validation"]["accuracy"]

    # merged export: a plain model with the same greedy outputs
    merged_dir = export_merged(model_dir, tmp_path / "merged")
    merged = load_saved(merged_dir)
    assert not is_peft(merged.model) and (merged_dir / "model.safetensors").exists()
    _, mpreds = evaluate_split(
        merged.model, merged.tokenizer, splits["validation"], template_from(recipe), NumericExtractor(),
        False, batch_size=8, max_new_tokens=16, device=torch.device("cpu"), split="validation",
    )
    assert [p["output"] for p in mpreds] == [p["output"] for p in saved]


def test_lora_run_resumes_from_an_adapter_checkpoint(tmp_path):
    from tests.helpers import crash_after as _crash_after

    recipe = _recipe(eval={"splits": []}, train={"epochs": 2, "lr": 2e-2, "checkpoint_every": 3, "keep_checkpoints": 10})
    full = tmp_path / "full"
    run_recipe(recipe, full, quiet=True)
    reference = {e["step"]: e["loss"] for e in train_events(full)}
    crashed = tmp_path / "crashed"
    _crash_after(full, crashed, "step-0000006")
    run_recipe(recipe, crashed, resume=True, quiet=True)
    resumed = {e["step"]: e["loss"] for e in train_events(crashed)}
    assert sorted(resumed) == list(range(7, 13))
    assert resumed == {s: v for s, v in reference.items() if s > 6}  # bitwise on CPU


def test_lora_targets_errors_name_the_field(tmp_path):
    recipe = _recipe(student={"lora": {**LORA, "targets": ["no_such_module"]}})
    with pytest.raises(StudentError, match="student.lora.targets"):
        run_recipe(recipe, tmp_path / "run", quiet=True)
    with pytest.raises(RecipeError, match="student.lora.rank"):
        _recipe(student={"lora": {**LORA, "rank": 0}})


def test_export_merged_refuses_a_full_model(tmp_path):
    from typer.testing import CliRunner

    from kpod.cli import app

    run = tmp_path / "run"
    run_recipe(tiny_recipe(train={"epochs": 1}), run, quiet=True)
    with pytest.raises(StudentError, match="not a LoRA adapter"):
        export_merged(run / "model", tmp_path / "merged")
    res = CliRunner().invoke(app, ["export", str(run / "model"), "--out", str(tmp_path / "merged")])
    assert res.exit_code == 2 and "not a LoRA adapter" in res.output and "Traceback" not in res.output
