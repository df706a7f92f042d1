"""The offline distillation loop of recipes/kd/, shrunk by --set: the teacher recipe is trained
once on first use (``trained:``), ``kpod teach`` writes its rationales, ``kpod rescore`` stores its
top-k on them, and students train on them with stored KD and with on-policy GKD."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from typer.testing import CliRunner

from kpod.cli import app

REPO = Path(__file__).resolve().parents[2]
SMALL = {
    "data": {"source": {"params": {"n_train": 32, "n_validation": 8, "n_test": 8, "n_ood": 0, "max_steps": 3}}},
    "student": {"tiny": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64},
                "tokenizer": {"vocab_size": 200},
                "pretrain": {"corpus": "arith_facts", "documents": 300, "steps": 3, "batch_size": 8, "seq_len": 32}},
    "train": {"epochs": 1, "batch_size": 16, "threads": 1},
    "eval": {"splits": ["validation"], "max_new_tokens": 16},
}


def small_sets() -> list[str]:
    out = []
    for section, value in SMALL.items():
        out += ["--set", f"{section}={json.dumps(value)}"] if section != "data" else [
            "--set", f"data.source.params={json.dumps(value['source']['params'])}"]
    return out


def kpod(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_teacher_teach_rescore_and_students(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("KPOD_CACHE", str(tmp_path / "cache"))
    teacher = tmp_path / "teacher.yaml"
    teacher.write_text(yaml.safe_dump({"extends": str(REPO / "recipes/kd/teacher.yaml"), **SMALL,
                                       "data": {"source": {"name": "arith", **SMALL["data"]["source"]}}}))
    model = f"trained:{teacher}"
    teach_out, store = tmp_path / "teach", tmp_path / "store"
    kpod("teach", "recipes/kd/teach.yaml", "--out", str(teach_out), "-q", *small_sets(),
         "--set", f"teacher.model={model}", "--set", "teacher.rationales=all", "--set", "teacher.max_tokens=24",
         "--set", "teacher.keep_truncated=true")
    rows = json.loads((teach_out / "train.json").read_text())
    assert len(rows) == 32 and all(r["id"].startswith("arith/train/") for r in rows)
    on_teacher = ["--set", f"data.source.params.teacher_rationales={teach_out / 'train.json'}"]
    out = kpod("rescore", "recipes/kd/std_cot.yaml", "--teacher", model, "--out", str(store), "--top-k", "8",
               *small_sets(), *on_teacher)
    assert "stored 32 rationales" in out
    kpod("run", "recipes/kd/kd_topk.yaml", "--out", str(tmp_path / "kd"), "-q", *small_sets(), *on_teacher,
         "--set", f"loss.params.teacher_store={store}")
    kpod("run", "recipes/kd/gkd.yaml", "--out", str(tmp_path / "gkd"), "-q", *small_sets(), *on_teacher,
         "--set", f"loss.params.teacher_model={model}", "--set", "loss.params.on_policy_max_new_tokens=12")
    for run in ("kd", "gkd"):
        summary = json.loads((tmp_path / run / "summary.json").read_text())
        assert summary["finished"] is True and summary["data_report"]["teacher_rationales"]["rationales"] == 32
    assert len(list((tmp_path / "cache" / "trained").iterdir())) == 1  # the teacher was trained once
