"""Runs survive `kill -9` (mid-training, mid-checkpoint, before any checkpoint), non-finite
losses and failing writes: `kpod run --resume` then ends exactly where an uninterrupted run ends.

The kills are real: `python -m kpod.cli run` in a subprocess, SIGKILL from this process. To kill
at an exact point the child is started with ``KPOD_FAULT=<point>:<step>`` (kpod/engine/train.py,
``fault_point``): it stops itself (SIGSTOP) there, this test waits for the stop with
``waitpid(WUNTRACED)`` (no sleeps, no polling) and sends SIGKILL. The slow sweep adds kills at
unplanned moments (SIGKILL as soon as the metrics log reaches a given line).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from kpod.cli import app
from tests.helpers import TINY, deep_update

runner = CliRunner()

# 96 training examples, batch 8: 12 steps per epoch, 24 in all; a checkpoint every 4 steps
STEPS, EVERY = 24, 4
RECIPE = deep_update(TINY, {
    "name": "kill",
    "train": {"epochs": 2, "batch_size": 8, "checkpoint_every": EVERY, "keep_checkpoints": 1, "log_every": 1},
    "eval": {"splits": ["test"], "max_new_tokens": 16},
})
VOLATILE = ("time", "tokens_per_s")  # wall-clock fields; everything else must match bitwise


def _recipe_file(directory: Path) -> Path:
    path = directory / "kill.yaml"
    path.write_text(yaml.safe_dump(RECIPE))
    return path


def _run(recipe: Path, out: Path, *extra: str) -> None:
    res = runner.invoke(app, ["run", str(recipe), "--out", str(out), "-q", *extra])
    assert res.exit_code == 0, res.output


def _outcome(run_dir: Path) -> dict:
    """What a finished run leaves: per-step training metrics, accuracies, predictions, weights."""
    events = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [{k: v for k, v in e.items() if k not in VOLATILE} for e in events if e["phase"] == "train"]
    summary = json.loads((run_dir / "summary.json").read_text())
    return {
        "train": train,
        "splits": summary["splits"],
        "final": summary["train"],
        "predictions": (run_dir / "predictions.jsonl").read_bytes(),
        "weights": load_file(str(run_dir / "model" / "model.safetensors")),
    }


def _assert_same(resumed: dict, reference: dict) -> None:
    assert [e["step"] for e in resumed["train"]] == list(range(1, STEPS + 1))  # each step once
    assert resumed["train"] == reference["train"]
    assert resumed["splits"] == reference["splits"] and resumed["final"] == reference["final"]
    assert resumed["predictions"] == reference["predictions"]
    assert resumed["weights"].keys() == reference["weights"].keys()
    for name, tensor in reference["weights"].items():
        assert torch.equal(resumed["weights"][name], tensor), name


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """An uninterrupted run of the same recipe and seed (in-process; CPU, one thread)."""
    d = tmp_path_factory.mktemp("reference")
    _run(_recipe_file(d), d / "run")
    return {"dir": d / "run", **_outcome(d / "run")}


def kill_at(fault: str, recipe: Path, out: Path, log: Path) -> None:
    """Start `kpod run` in a subprocess with ``KPOD_FAULT=fault``; SIGKILL it where it stops."""
    env = {**os.environ, "KPOD_FAULT": fault, "HF_HUB_OFFLINE": "1"}
    with open(log, "wb") as f:
        proc = subprocess.Popen([sys.executable, "-m", "kpod.cli", "run", str(recipe), "--out", str(out), "-q"],
                                stdout=f, stderr=subprocess.STDOUT, env=env)
    _, status = os.waitpid(proc.pid, os.WUNTRACED)
    assert os.WIFSTOPPED(status), f"the run ended before {fault}:\n{log.read_text()}"
    os.kill(proc.pid, signal.SIGKILL)  # kill -9
    assert proc.wait() == -signal.SIGKILL


def _resume_event(run_dir: Path) -> dict:
    events = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    resumes = [e for e in events if e["phase"] == "resume"]
    assert len(resumes) == 1
    return resumes[0]


def test_kill_9_mid_training_then_resume_is_bitwise_identical(tmp_path, reference):
    recipe, out = _recipe_file(tmp_path), tmp_path / "run"
    kill_at("after-step:6", recipe, out, tmp_path / "log")
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-0000004"]
    assert not (out / "summary.json").exists()
    _run(recipe, out, "--resume")
    ev = _resume_event(out)
    assert ev["checkpoint"] == "step-0000004" and ev["step"] == 4
    assert ev["metrics_dropped"] == 2  # steps 5 and 6, trained again after the resume
    _assert_same(_outcome(out), reference)


def test_kill_9_during_a_checkpoint_write_resumes_from_the_last_complete_one(tmp_path, reference):
    recipe, out = _recipe_file(tmp_path), tmp_path / "run"
    kill_at("mid-checkpoint:8", recipe, out, tmp_path / "log")
    ckpts = out / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-0000004", "step-0000008.tmp"]
    half = ckpts / "step-0000008.tmp" / "model.pt"
    assert half.stat().st_size == (ckpts / "step-0000004" / "model.pt").stat().st_size // 2
    assert not (ckpts / "step-0000008.tmp" / "state.json").exists()
    _run(recipe, out, "--resume")
    ev = _resume_event(out)
    assert ev["checkpoint"] == "step-0000004"
    assert ev["removed"] == ["checkpoints/step-0000008.tmp"]
    assert [p.name for p in ckpts.iterdir()] == [f"step-{STEPS:07d}"]  # keep_checkpoints: 1
    _assert_same(_outcome(out), reference)


def test_kill_9_before_the_first_checkpoint_resumes_from_scratch(tmp_path, reference):
    recipe, out = _recipe_file(tmp_path), tmp_path / "run"
    kill_at("after-step:2", recipe, out, tmp_path / "log")
    assert not (out / "checkpoints").exists() or not any((out / "checkpoints").iterdir())
    assert (out / "tokenizer" / "tokenizer.json").exists()  # saved whole before training began
    _run(recipe, out, "--resume")
    ev = _resume_event(out)
    assert ev["checkpoint"] is None and ev["step"] == 0 and ev["metrics_dropped"] == 2
    _assert_same(_outcome(out), reference)


def test_resume_drops_a_torn_metrics_line_and_stray_temp_files(tmp_path, reference):
    """What a kill inside a write leaves: half a JSON line, an atomic write's temp file."""
    out = tmp_path / "run"
    shutil.copytree(reference["dir"], out)
    for name in ("summary.json", "predictions.jsonl"):
        (out / name).unlink()
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"phase": "eval", "split": "te')
    (out / "summary.json.123.abcdef12.tmp").write_text("{")
    _run(_recipe_file(tmp_path), out, "--resume")
    ev = _resume_event(out)
    assert ev["removed"] == ["summary.json.123.abcdef12.tmp"]
    assert ev["metrics_dropped"] == 2  # the complete eval event and the torn one
    assert not list(out.glob("*.tmp"))
    _assert_same(_outcome(out), reference)


# ---------------------------------------------------------------------------- non-finite loss
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_loss_names_step_and_sample_ids_and_keeps_the_last_checkpoint(tmp_path, monkeypatch, bad):
    from dataclasses import replace

    from kpod import registry

    recipe = _recipe_file(tmp_path)
    train_ids = sorted(f"arith/train/{i:05d}" for i in range(96))
    g = torch.Generator().manual_seed(RECIPE["seed"] * 1_000_003 + 1)  # the engine's epoch-1 order
    order = [train_ids[i] for i in torch.randperm(96, generator=g).tolist()]
    poisoned = order[6 * 8 + 3]  # in the batch of step 7 (batch size 8)
    loss_cls = registry.LOSSES.get("kpod")
    original, original_hidden = loss_cls.__call__, loss_cls.from_hidden

    def poisoned_(tl, batch):
        if poisoned in batch["sample_ids"]:
            i = batch["sample_ids"].index(poisoned)
            scale = torch.ones_like(tl.nll)
            if batch.get("packed"):  # packed rows: the poisoned sample's targets wherever they sit
                scale[batch["seq_index"][:, 1:] == i] = bad
            else:
                scale[i] = bad
            tl = replace(tl, nll=tl.nll * scale)
        return tl

    def poison(self, logits, batch, is_encoder_decoder):
        return poisoned_(original(self, logits, batch, is_encoder_decoder), batch)

    def poison_hidden(self, hidden, head, batch, is_encoder_decoder, chunk):
        return poisoned_(original_hidden(self, hidden, head, batch, is_encoder_decoder, chunk), batch)

    monkeypatch.setattr(loss_cls, "__call__", poison)
    monkeypatch.setattr(loss_cls, "from_hidden", poison_hidden)
    out = tmp_path / "run"
    res = runner.invoke(app, ["run", str(recipe), "--out", str(out), "-q"])
    assert res.exit_code == 1, res.output
    msg = " ".join(res.output.split())
    assert "non-finite loss" in msg and "at step 7" in msg and poisoned in msg
    assert "step-0000004" in msg and "is intact" in msg and "Traceback" not in res.output
    ckpts = out / "checkpoints"
    assert [p.name for p in ckpts.iterdir()] == ["step-0000004"]
    assert json.loads((ckpts / "step-0000004" / "state.json").read_text())["global_step"] == 4
    for name in ("model.pt", "optimizer.pt", "lr_scheduler.pt", "rng.pt"):
        torch.load(ckpts / "step-0000004" / name, weights_only=True)  # complete and loadable
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 7))  # the failing step logged nothing


# ---------------------------------------------------------------------------- failing writes
def test_full_disk_during_a_checkpoint_is_a_clear_error_and_the_run_resumes(tmp_path, monkeypatch, reference):
    recipe, out = _recipe_file(tmp_path), tmp_path / "run"
    real_save = torch.save

    def disk_full_at_step_8(obj, f, *args, **kwargs):
        if "step-0000008" in str(getattr(f, "name", f)):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", disk_full_at_step_8)
    res = runner.invoke(app, ["run", str(recipe), "--out", str(out), "-q"])
    assert res.exit_code == 1, res.output
    msg = " ".join(res.output.split())
    assert "checkpoint step-0000008 not written" in msg and "No space left on device [ENOSPC] (the disk is full: " in msg and "MiB free there)" in msg
    assert "the last complete checkpoint" in msg and "step-0000004, is intact" in msg and "--resume" in msg
    assert "Traceback" not in res.output
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-0000004"]  # the partial one is gone
    monkeypatch.setattr(torch, "save", real_save)  # space freed
    _run(recipe, out, "--resume")
    _assert_same(_outcome(out), reference)


def test_full_disk_while_logging_names_the_file(tmp_path):
    from kpod.runs import MetricsWriter, RunWriteError

    with pytest.raises(RunWriteError, match=r"cannot write /dev/full: No space left on device \[ENOSPC\]"):
        MetricsWriter(Path("/dev/full")).write(phase="train", step=1)  # a real ENOSPC


def test_failed_atomic_write_leaves_the_old_file_and_no_temp_file(tmp_path, monkeypatch):
    import kpod.runs as runs

    target = tmp_path / "summary.json"
    target.write_text("old")

    def enospc(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(runs.os, "fsync", enospc)
    with pytest.raises(runs.RunWriteError, match="summary.json: No space left on device"):
        runs.write_json(target, {"new": 1})
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_unusable_run_directory_is_exit_code_2(tmp_path):
    recipe = _recipe_file(tmp_path)
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    cases = [(blocker, "exists and is not a directory"), (blocker / "run", "cannot write to run directory")]
    if sys.platform.startswith("linux"):
        cases.append((Path("/proc/kpod-run"), "cannot write to run directory /proc/kpod-run"))  # even as root
    for out, expected in cases:
        res = runner.invoke(app, ["run", str(recipe), "--out", str(out), "-q"])
        assert res.exit_code == 2, res.output
        assert expected in " ".join(res.output.split()) and "Traceback" not in res.output


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores permission bits; the file-in-the-way and /proc cases cover it")
def test_read_only_run_directory_is_exit_code_2(tmp_path):
    recipe = _recipe_file(tmp_path)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        res = runner.invoke(app, ["run", str(recipe), "--out", str(ro / "run"), "-q"])
    finally:
        ro.chmod(0o700)
    assert res.exit_code == 2 and "cannot write to run directory" in res.output


# ---------------------------------------------------------------------------- safety of resume
def test_resume_never_unpickles_code_from_a_checkpoint(tmp_path, reference):
    """A tampered checkpoint file that would run code when unpickled is refused (weights_only)."""
    out = tmp_path / "run"
    shutil.copytree(reference["dir"], out)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    rng = out / "checkpoints" / f"step-{STEPS:07d}" / "rng.pt"
    torch.save({"torch": Evil()}, rng)
    res = runner.invoke(app, ["run", str(_recipe_file(tmp_path)), "--out", str(out), "--resume", "-q"])
    assert res.exit_code == 2, res.output
    assert "rng.pt: cannot load this checkpoint file" in " ".join(res.output.split())
    assert not marker.exists()


# ---------------------------------------------------------------------------- slow sweep
KILL_POINTS = [f"after-step:{s}" for s in range(1, STEPS + 1)] + [f"mid-checkpoint:{s}" for s in range(EVERY, STEPS + 1, EVERY)]


@pytest.mark.slow
@pytest.mark.parametrize("fault", KILL_POINTS)
def test_every_kill_point_resumes_bitwise(tmp_path, reference, fault):
    recipe, out = _recipe_file(tmp_path), tmp_path / "run"
    kill_at(fault, recipe, out, tmp_path / "log")
    _run(recipe, out, "--resume")
    _assert_same(_outcome(out), reference)


@pytest.mark.slow
@pytest.mark.parametrize("lines", [1, 3, 5, 8, 9, 12, 13, 16, 17, 20, 22, 24])
def test_unplanned_kill_resumes_bitwise(tmp_path, reference, lines):
    """SIGKILL as soon as metrics.jsonl holds ``lines`` lines, wherever the run then is (between
    steps, inside a checkpoint or a log write, in evaluation)."""
    recipe, out = _recipe_file(tmp_path), tmp_path / "run"
    with open(tmp_path / "log", "wb") as f:
        proc = subprocess.Popen([sys.executable, "-m", "kpod.cli", "run", str(recipe), "--out", str(out), "-q"],
                                stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    metrics = out / "metrics.jsonl"
    while True:  # watch the log: the kill's trigger, not a synchronisation
        try:
            proc.wait(timeout=0.005)
            break
        except subprocess.TimeoutExpired:
            if metrics.exists() and metrics.read_bytes().count(b"\n") >= lines:
                proc.kill()
                proc.wait()
                break
    assert proc.returncode == -signal.SIGKILL, f"the run ended before the kill:\n{(tmp_path / 'log').read_text()}"
    _run(recipe, out, "--resume")
    _assert_same(_outcome(out), reference)
