"""One process per run directory: a second `kpod run` on a busy directory is refused naming the
holder; a lock left by a dead process is taken over; `kpod ablate`'s runs die with it.

The busy holder is a real `kpod run` in a child process, stopped (SIGSTOP, ``KPOD_FAULT``) after
its second step, so it is alive and holds the lock for as long as the test needs.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kpod.cli import app
from kpod.engine import run_lock
from kpod.runs import LOCK_NAME, RunDirError
from tests.e2e.test_reliability_runs import _recipe_file

runner = CliRunner()


def _one_line_exit_2(res) -> str:
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.output, res.output
    return lines[0]


def test_a_second_run_on_a_busy_directory_is_refused_then_a_dead_holders_lock_is_taken_over(tmp_path):
    recipe, out = _recipe_file(tmp_path), tmp_path / "run"
    env = {**os.environ, "KPOD_FAULT": "after-step:2", "HF_HUB_OFFLINE": "1"}
    with open(tmp_path / "log", "wb") as f:
        holder = subprocess.Popen([sys.executable, "-m", "kpod.cli", "run", str(recipe), "--out", str(out), "-q"],
                                  stdout=f, stderr=subprocess.STDOUT, env=env)
    try:
        _, status = os.waitpid(holder.pid, os.WUNTRACED)  # stopped after step 2, lock held
        assert os.WIFSTOPPED(status), (tmp_path / "log").read_text()
        before = (out / "metrics.jsonl").read_bytes()
        for extra in ([], ["--resume"], ["--overwrite"], ["--overwrite", "--set", "train.lr=1e-3"]):
            res = runner.invoke(app, ["run", str(recipe), "--out", str(out), "-q", *extra], terminal_width=400)
            line = _one_line_exit_2(res)
            assert "in use by another kpod run" in line and f"pid {holder.pid} on {socket.gethostname()}" in line
        # the refused runs changed nothing: the holder's directory is as it left it
        assert (out / "metrics.jsonl").read_bytes() == before
        assert json.loads((out / LOCK_NAME).read_text())["pid"] == holder.pid
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    # the holder is dead: its lock is stale, the resume takes it over and releases it at the end
    res = runner.invoke(app, ["run", str(recipe), "--out", str(out), "-q", "--resume"])
    assert res.exit_code == 0, res.output
    assert not (out / LOCK_NAME).exists()
    steps = [e["step"] for e in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if e["phase"] == "train"]
    assert steps == sorted(set(steps))  # each step logged once


def test_sigterm_ends_a_run_through_its_finally_blocks_and_releases_the_lock(tmp_path):
    recipe, out = _recipe_file(tmp_path), tmp_path / "run"
    env = {**os.environ, "KPOD_FAULT": "after-step:2", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "kpod.cli", "run", str(recipe), "--out", str(out), "-q"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    _, status = os.waitpid(proc.pid, os.WUNTRACED)
    assert os.WIFSTOPPED(status) and (out / LOCK_NAME).exists()
    os.kill(proc.pid, signal.SIGTERM)  # pending while stopped, delivered on SIGCONT
    os.kill(proc.pid, signal.SIGCONT)
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM
    assert not (out / LOCK_NAME).exists()


def _write_lock(run_dir: Path, **holder) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / LOCK_NAME).write_text(json.dumps({"time": 0, "command": "kpod run x.yaml", **holder}))


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid  # reaped: no process has it (until reuse, which the start-time check covers)


def test_a_stale_lock_is_taken_over_and_released(tmp_path):
    _write_lock(tmp_path / "a", pid=_dead_pid(), host=socket.gethostname(), start="1")
    with run_lock.run_dir_lock(tmp_path / "a"):
        assert json.loads((tmp_path / "a" / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert not (tmp_path / "a" / LOCK_NAME).exists()
    # a live pid that started at another time is a reused pid: the lock is stale too
    _write_lock(tmp_path / "b", pid=os.getppid(), host=socket.gethostname(), start="not-its-start-time")
    if run_lock._start_time(os.getppid()) is None:
        pytest.skip("no /proc start times on this platform")
    run_lock.release(run_lock.acquire(tmp_path / "b"))


def test_a_live_or_foreign_holder_is_refused_and_the_lock_is_released_on_error(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from kpod.engine.run_lock import acquire; "
        f"acquire(Path({str(tmp_path / 'live')!r})); print('held', flush=True); time.sleep(120)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunDirError, match=f"in use by another kpod run \\(pid {holder.pid} "):
            run_lock.acquire(tmp_path / "live")
    finally:
        holder.kill()
        holder.wait()
    run_lock.release(run_lock.acquire(tmp_path / "live"))  # its holder died: the lock is free
    _write_lock(tmp_path / "far", pid=1, host="another-host.example")
    with pytest.raises(RunDirError, match=f"or remove {tmp_path / 'far' / LOCK_NAME} if that host"):
        run_lock.acquire(tmp_path / "far")
    with pytest.raises(ValueError), run_lock.run_dir_lock(tmp_path / "mine"):
        raise ValueError("a run that failed")
    assert not (tmp_path / "mine" / LOCK_NAME).exists()


def test_runs_racing_for_a_stale_lock_take_it_once(tmp_path):
    """Eight takers at once on a dead holder's lock: exactly one wins (the flock decides)."""
    _write_lock(tmp_path / "d", pid=_dead_pid(), host=socket.gethostname(), start="1")
    won, refused, start = [], [], threading.Barrier(8)

    def take() -> None:
        start.wait()
        try:
            won.append(run_lock.acquire(tmp_path / "d"))
        except RunDirError as e:
            refused.append(str(e))

    threads = [threading.Thread(target=take) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and len(refused) == 7 and all("in use by another kpod run" in r for r in refused)
    run_lock.release(won[0])
    assert not (tmp_path / "d" / LOCK_NAME).exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux only")
def test_a_child_started_like_ablate_runs_dies_with_its_parent(tmp_path):
    """kill -9 of the parent (as of a `kpod ablate`) ends the child: no orphan keeps running."""
    child = ("import time; from kpod.engine.run_lock import die_with_parent, terminate_as_exit\n"
             "with terminate_as_exit():\n    die_with_parent(); print('ready', flush=True); time.sleep(120)")
    parent = ("import os, subprocess, sys; "
              f"env = {{**os.environ, {run_lock.PARENT_ENV!r}: str(os.getpid())}}; "
              f"p = subprocess.Popen([sys.executable, '-c', {child!r}], env=env, stdout=subprocess.PIPE, text=True); "
              "p.stdout.readline(); print(p.pid, flush=True); p.wait()")
    proc = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True)
    child_pid = int(proc.stdout.readline())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 30  # a bound, not a timing assertion
    while time.monotonic() < deadline and _running(child_pid):
        time.sleep(0.05)
    assert not _running(child_pid), "the child outlived its killed parent"


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie waiting for its new parent to reap it has ended


def test_ablate_starts_its_runs_with_the_parent_death_variable(tmp_path, monkeypatch):
    from kpod import ablate
    from kpod.ablate import execution

    seen = {}

    class FakePopen:
        def __init__(self, cmd, stdout, stderr, env):
            seen.update(env)

        def wait(self):
            return 0

    monkeypatch.setattr(execution.subprocess, "Popen", FakePopen)
    monkeypatch.setattr(execution, "is_resumable", lambda spec: False)
    spec = ablate.RunSpec(ablate.Variant("v", _recipe_file(tmp_path), []), 0, tmp_path / "v" / "seed0")
    ablate.run_spec(spec)
    assert seen[run_lock.PARENT_ENV] == str(os.getpid())
