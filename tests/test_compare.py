"""`kpod compare`: paired statistics match scipy on constructed examples; disagreements are listed
by sample_id; unshared questions are counted, not dropped silently."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats
from typer.testing import CliRunner

from kpod.cli import app
from kpod.compare import CompareError, compare_runs, mcnemar_exact, paired_bootstrap


def _write_run(path, split, correct, *, prefix="q", extra=()):
    path.mkdir(parents=True)
    rows = [{"sample_id": f"{prefix}{i:03d}", "split": split, "prompt": f"Q{i}", "output": "", "parsed": str(int(c)),
             "gold": "1", "correct": bool(c)} for i, c in enumerate(correct)]
    rows += list(extra)
    (path / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("b,c", [(3, 12), (0, 7), (5, 5), (1, 9), (40, 25), (0, 0)])
def test_mcnemar_exact_matches_scipy_binomtest(b, c):
    expected = 1.0 if b + c == 0 else stats.binomtest(b, b + c, 0.5, alternative="two-sided").pvalue
    assert mcnemar_exact(b, c) == pytest.approx(expected, rel=1e-12)


def test_mcnemar_exact_by_hand():
    # 1 vs 9 discordant: 2 * (C(10,0) + C(10,1)) / 2^10
    assert mcnemar_exact(1, 9) == pytest.approx(2 * 11 / 1024)


def test_paired_bootstrap_matches_scipy_bootstrap():
    rng = np.random.default_rng(1)
    a = rng.random(300) < 0.62
    b = np.where(rng.random(300) < 0.8, a, ~a)  # paired: mostly the same questions right
    lo, hi = paired_bootstrap(a, b, n_resamples=20_000, seed=3)
    ref = stats.bootstrap((a.astype(float), b.astype(float)), lambda x, y, axis=-1: np.mean(x - y, axis=axis),
                          paired=True, vectorized=True, n_resamples=20_000, method="percentile", rng=np.random.default_rng(7))
    assert lo == pytest.approx(ref.confidence_interval.low, abs=0.006)
    assert hi == pytest.approx(ref.confidence_interval.high, abs=0.006)
    assert lo < a.mean() - b.mean() < hi


def test_compare_runs_pairs_questions_by_sample_id(tmp_path):
    # A right on 0-29, B right on 10-39 of 50 shared questions; B's file is in another order and
    # holds two questions A never saw
    a_correct = [i < 30 for i in range(50)]
    b_correct = [10 <= i < 40 for i in range(50)]
    run_a = _write_run(tmp_path / "a", "test", a_correct)
    b_rows = [{"sample_id": f"q{i:03d}", "split": "test", "parsed": "x", "gold": "1", "correct": c}
              for i, c in reversed(list(enumerate(b_correct)))]
    b_rows += [{"sample_id": f"extra{i}", "split": "test", "parsed": "1", "gold": "1", "correct": True} for i in range(2)]
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in b_rows))
    res = compare_runs([run_a, tmp_path / "b"], n_resamples=2000)
    e = res["splits"]["test"]
    assert e["n"] == 50 and e["only_in"] == {"a": 0, "b": 2}
    assert e["accuracy"] == {"a": 0.6, "b": 0.6}
    (p,) = e["pairs"]
    assert (p["both_right"], p["a_only"], p["b_only"], p["both_wrong"]) == (20, 10, 10, 10)
    assert [q["sample_id"] for q in p["a_right_b_wrong"]] == [f"q{i:03d}" for i in range(10)]
    assert [q["sample_id"] for q in p["b_right_a_wrong"]] == [f"q{i:03d}" for i in range(30, 40)]
    assert p["mcnemar_p"] == pytest.approx(stats.binomtest(10, 20).pvalue)
    assert p["diff"] == 0 and p["ci_low"] < 0 < p["ci_high"]


def test_compare_cli_and_bad_input(tmp_path):
    run_a = _write_run(tmp_path / "a", "test", [1, 1, 0, 1])
    run_b = _write_run(tmp_path / "b", "test", [0, 1, 0, 0])
    runner = CliRunner()
    res = runner.invoke(app, ["compare", str(run_a), str(run_b), "--resamples", "500", "--out", str(tmp_path / "c.md")])
    assert res.exit_code == 0, res.output
    assert "McNemar" in res.output and "a right, b wrong: 2 questions" in res.output and "`q000`" in res.output
    assert (tmp_path / "c.md").read_text().startswith("## test (4 shared questions)")
    res = runner.invoke(app, ["compare", str(run_a), str(run_b), "--json", "--resamples", "500"])
    assert json.loads(res.output)["splits"]["test"]["pairs"][0]["a_only"] == 2
    res = runner.invoke(app, ["compare", str(run_a)])
    assert res.exit_code == 2 and "at least two" in res.output
    dup = _write_run(tmp_path / "dup", "test", [1], extra=[{"sample_id": "q000", "split": "test", "correct": False}])
    with pytest.raises(CompareError, match=r"predictions.jsonl:2: sample_id 'q000' appears twice"):
        compare_runs([run_a, dup])
    with pytest.raises(CompareError, match="not a finished run"):
        compare_runs([run_a, tmp_path / "nothing"])
