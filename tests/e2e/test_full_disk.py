"""A full disk at every write path is the one documented error: the path, "No space left on
device [ENOSPC]", the free space; partial files removed; the last complete checkpoint usable and
`--resume` after freeing space bitwise equal to an uninterrupted run.

The failure is injected where the disk would fail: the file object a writer writes through (so
torch's zip writer, which swallows the OSError and fails later with "enforce fail … unexpected
pos", really meets it), safetensors' Rust writer's error, a short ``os.write``.
"""

from __future__ import annotations

import errno
import io
import os
import re
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError
from typer.testing import CliRunner

import kpod.engine.checkpointing.files as checkpoint
from kpod import cache, runs
from kpod.cli import app
from kpod.engine.checkpointing.selection import write_selected
from kpod.runs import RunWriteError, append_whole
from tests.e2e.test_reliability_runs import _assert_same, _outcome, _recipe_file, _run, reference  # noqa: F401

runner = CliRunner()
FULL = r"No space left on device \[ENOSPC\] \(the disk is full: [0-9.]+ MiB free there\)"


class FillsUp(io.RawIOBase):
    """A file that takes ``room`` bytes and then fails as a full disk does (a short write, then ENOSPC)."""

    def __init__(self, f, room: int) -> None:
        self.f, self.room = f, room

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        data = bytes(data)
        if self.room <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        part = data[: self.room]
        self.room -= len(part)
        return self.f.write(part)

    def fileno(self) -> int:
        return self.f.fileno()

    def flush(self) -> None:
        if not self.f.closed:
            self.f.flush()

    def close(self) -> None:
        super().close()
        self.f.close()


def filling_open(match: str, room: int = 5000):
    """``open`` for the checkpoint module: files whose path contains ``match`` fill up after ``room`` bytes."""
    def fake_open(path, mode="r", *args, **kwargs):
        f = open(path, mode, *args, **kwargs)
        return FillsUp(f, room) if match in str(path) and "w" in mode else f
    return fake_open


def test_torch_save_on_a_full_disk_raises_the_disk_error_not_torchs(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint, "open", filling_open("model.pt"), raising=False)
    with pytest.raises(OSError) as e:
        checkpoint.save_file({"w": torch.zeros(50_000)}, tmp_path / "model.pt")
    assert e.value.errno == errno.ENOSPC  # not RuntimeError: [enforce fail at inline_container.cc] unexpected pos


def test_a_full_disk_mid_checkpoint_removes_the_partial_directory_and_the_run_resumes(tmp_path, monkeypatch, reference):  # noqa: F811
    recipe, out = _recipe_file(tmp_path), tmp_path / "run"
    monkeypatch.setattr(checkpoint, "open", filling_open("step-0000008.tmp"), raising=False)
    res = runner.invoke(app, ["run", str(recipe), "--out", str(out), "-q"], terminal_width=4000)
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    line = res.output.strip()
    assert len(line.splitlines()) == 1
    assert "checkpoint step-0000008 not written: cannot write" in line and "step-0000008.tmp" in line
    assert re.search(FULL, line) and "step-0000004, is intact" in line and "--resume" in line
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-0000004"]  # no step-0000008.tmp
    monkeypatch.undo()  # space freed
    _run(recipe, out, "--resume")
    _assert_same(_outcome(out), reference)


def test_a_full_disk_while_saving_the_model_leaves_no_partial_model(tmp_path, monkeypatch):
    """safetensors' writer reports ENOSPC only inside its message; the run still names it."""
    import transformers.modeling_utils as mu

    recipe, out = _recipe_file(tmp_path), tmp_path / "run"

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(mu, "safe_save_file", full)
    res = runner.invoke(app, ["run", str(recipe), "--out", str(out), "-q"], terminal_width=4000)
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    assert re.search(rf"cannot write {out}/model: {FULL}", res.output)
    assert not (out / "model").exists() and not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    assert (out / "checkpoints" / "step-0000024" / "state.json").is_file()  # the last checkpoint is usable


def test_a_full_disk_writing_the_selected_model_leaves_no_tmp(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint, "open", filling_open("selected"), raising=False)
    with pytest.raises(RunWriteError, match=rf"selected model step-0000003 not written: cannot write .*step-0000003\.tmp: {FULL}"):
        write_selected(tmp_path, 3, 0.5, {"w": torch.zeros(50_000)})
    assert list((tmp_path / "selected").iterdir()) == []


def test_a_metrics_line_is_appended_whole_or_not_at_all(tmp_path, monkeypatch):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n')
    real_write = os.write

    def half_then_full(fd, data):
        if len(data) > 4:
            return real_write(fd, bytes(data[: len(data) // 2]))  # a short write
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(runs.os, "write", half_then_full)
    with pytest.raises(RunWriteError, match=rf"cannot write {path}: {FULL}"):
        runs.MetricsWriter(path).write(phase="train", step=2, loss=0.5)
    assert path.read_text() == '{"step": 1}\n'  # no torn line
    monkeypatch.undo()
    append_whole(path, b'{"step": 2}\n')
    assert path.read_text().splitlines() == ['{"step": 1}', '{"step": 2}']


def test_a_full_disk_in_a_cache_write_is_the_run_error_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("KPOD_CACHE", str(tmp_path))

    def fills(tmp: Path) -> None:
        tmp.mkdir()
        (tmp / "base.json").write_text("{}")
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    with pytest.raises(RunWriteError, match=rf"cannot write {tmp_path}/pretrained/x\.[0-9]+\.[0-9a-f]+\.tmp: {FULL}"):
        cache.build_dir(tmp_path / "pretrained" / "x", fills, "base.json")
    assert list((tmp_path / "pretrained").iterdir()) == []

    def enospc(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(runs.os, "fsync", enospc)
    with pytest.raises(RunWriteError, match=rf"cannot write {tmp_path}/difficulty/k\.json: {FULL}"):
        cache.write_verified(tmp_path / "difficulty" / "k.json", "{}")
    assert list((tmp_path / "difficulty").iterdir()) == []
