"""The typer CLI: exit codes, error messages, and the weights / plan exports on a tiny recipe."""

from __future__ import annotations

import json
import sys

import pytest
import yaml
from typer.testing import CliRunner

from kpod.cli import app
from tests.helpers import TINY, deep_update

runner = CliRunner()

KPOD = deep_update(TINY, {
    "weighting": {"name": "mask_learning", "params": {
        "predictor": "tiny:llama", "predictor_tiny": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64},
        "predictor_warmup_steps": 2, "max_steps": 2, "batch_size": 8, "heads": 2, "mlp_hidden": 16}},
    "scheduler": {"name": "kpod_knapsack", "params": {"T": 2}},
    "clusters": {"k": 2, "restarts": 2},
})


def _write(tmp_path, raw, name="r.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return path


def test_validate_reports_bad_fields_with_exit_code_2(tmp_path):
    bad = _write(tmp_path, deep_update(TINY, {"train": {"lrr": 1}}))
    res = runner.invoke(app, ["validate", str(bad)])
    assert res.exit_code == 2
    assert "train.lrr" in res.output and "Traceback" not in res.output
    ok = _write(tmp_path, TINY, "ok.yaml")
    res = runner.invoke(app, ["validate", str(ok), "--set", "train.lr=0.01"])
    assert res.exit_code == 0 and "lr: 0.01" in res.output


def test_weights_export_jsonl_and_html(tmp_path, monkeypatch):
    monkeypatch.setenv("KPOD_CACHE", str(tmp_path / "cache"))
    from transformers.utils import logging as hf_logging

    recipe = _write(tmp_path, KPOD)
    hf_logging.enable_progress_bar()
    res = runner.invoke(app, ["weights", str(recipe), "--out", str(tmp_path / "w.jsonl"), "--html", str(tmp_path / "w.html"), "-q"])
    assert res.exit_code == 0, res.output
    assert not hf_logging.is_progress_bar_enabled()  # no "Loading weights: 0%" bar among token weights
    assert "below 0.5 = calculation tokens get less weight than filler" in " ".join(res.output.split())
    rows = [json.loads(x) for x in (tmp_path / "w.jsonl").read_text().splitlines()]
    assert len(rows) == 96 and all(0.0 < w < 1.0 for r in rows for w, (s, e) in zip(r["weights"], r["offsets"]) if e > s)
    assert "ROC-AUC" in res.output  # (rich wraps long lines)
    assert (tmp_path / "w.html").read_text().count("<span class='t'") > 100


def test_plan_export_with_plot(tmp_path, monkeypatch):
    monkeypatch.setenv("KPOD_CACHE", str(tmp_path / "cache"))
    recipe = _write(tmp_path, KPOD)
    from transformers.utils import logging as hf_logging

    hf_logging.enable_progress_bar()
    res = runner.invoke(app, ["plan", str(recipe), "--out", str(tmp_path / "plan.json"), "--plot", str(tmp_path / "plan.png"), "-q"])
    assert res.exit_code == 0, res.output
    assert not hf_logging.is_progress_bar_enabled()
    doc = json.loads((tmp_path / "plan.json").read_text())
    assert len(doc["stages"]) == 2 and len(doc["questions_per_c"]) == 2
    assert sum(doc["questions_per_c"][0].values()) == 96
    assert [s["target_D"] for s in doc["info"]["stages"]][0] <= doc["info"]["B"]
    assert (tmp_path / "plan.png").read_bytes()[:4] == b"\x89PNG"


def test_env_prints_versions():
    res = runner.invoke(app, ["env"])
    assert res.exit_code == 0
    assert "kpod: 0.1.0" in res.output and "torch:" in res.output and "transformers:" in res.output


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the file by /proc/self/fd")
def test_weights_and_plan_write_failures_exit_1_naming_the_file(tmp_path, monkeypatch):
    import errno
    import os

    monkeypatch.setenv("KPOD_CACHE", str(tmp_path / "cache"))
    recipe = _write(tmp_path, TINY)  # uniform weights, linear scheduler: quick
    real_fsync = os.fsync

    def fsync(fd):  # the disk fills up while the weights file is written
        if "w.jsonl" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    out = tmp_path / "w.jsonl"
    res = runner.invoke(app, ["weights", str(recipe), "--out", str(out), "-q"])
    assert res.exit_code == 1, res.output
    msg = " ".join(res.output.split())
    assert f"cannot write {out}: No space left on device [ENOSPC] (the disk is full: " in msg
    assert "Traceback" not in res.output and list(tmp_path.glob("w.jsonl*")) == []  # nothing half-written
    monkeypatch.setattr(os, "fsync", real_fsync)
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the plot's folder should be")
    res = runner.invoke(app, ["plan", str(recipe), "--out", str(tmp_path / "plan.json"), "--plot", str(blocker / "p.png"), "-q"])
    assert res.exit_code == 1, res.output
    assert f"cannot write {blocker / 'p.png'}" in " ".join(res.output.split()) and "Traceback" not in res.output


# --- error text is text, not rich markup --------------------------------------------------------
def _install_hints() -> dict[str, str]:
    """Every "pip install ...[extra]..." hint in kpod's source, by extra."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "kpod"
    hints = {}
    for path in root.rglob("*.py"):
        for m in re.finditer(r"pip install [^\"\n]*?\[(\w+)\]", path.read_text(encoding="utf-8")):
            hints[m.group(1)] = m.group(0)
    return hints


def test_every_install_hint_keeps_its_extra_in_error_output(monkeypatch):
    import io

    from rich.console import Console

    from kpod.cli import common
    from kpod.progress import Reporter

    hints = _install_hints()
    assert {"plot", "ray", "lora", "vllm", "tensorboard", "wandb"} <= set(hints)
    for extra, hint in hints.items():
        buf = io.StringIO()
        monkeypatch.setattr(common, "err", Console(file=buf, width=400))
        common.fail(f"needs {extra}: {hint}", 2)
        Reporter(console=Console(file=buf, width=400)).warn(hint)
        Reporter(console=Console(file=buf, width=400)).info(hint)
        assert buf.getvalue().count(f"[{extra}]") == 3, (extra, buf.getvalue())


def test_ray_executor_hint_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray → ImportError
    res = runner.invoke(app, ["ablate", str(_write(tmp_path, TINY)), "--vary", "train.lr=0.01,0.02",
                              "--executor", "ray", "--out", str(tmp_path / "abl")])
    assert res.exit_code == 2
    assert "pip install 'kpod[ray]'" in " ".join(res.output.split())
