"""The epoch-end statistics under two CPU ranks (DDP over gloo) equal one process's: each rank
measures a share (uneven: one rank runs a filler pass), the shares are gathered to all."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_measure_the_same_statistics_as_one_process(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    env.pop("WORLD_SIZE", None)
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    proc = subprocess.run([sys.executable, "-m", "tests.distributed.workers.ddp_epoch_stats", str(one)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
                "--master_addr", "127.0.0.1", "--master_port", str(_free_port())]
    proc = subprocess.run([*torchrun, "-m", "tests.distributed.workers.ddp_epoch_stats", str(two)],
                          cwd=ROOT, env=dict(env, ACCELERATE_USE_CPU="true"), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    assert (a["world"], b["world"]) == (1, 2)
    assert a["training"] and b["training"]  # the training mode is restored
    assert a["given"] == b["given"] and len(a["output_nll"]) == len(b["step_nll"]) == 33
    assert set(a["output_nll"]) == set(b["output_nll"]) and set(a["step_nll"]) == set(b["step_nll"])
    for sid, v in a["output_nll"].items():  # other batch companions: padding changes only rounding
        assert b["output_nll"][sid] == pytest.approx(v, rel=1e-5)
        assert b["step_nll"][sid] == pytest.approx(a["step_nll"][sid], rel=1e-5)
