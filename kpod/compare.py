"""``kpod compare``: paired comparison of runs question by question (same sample_ids).

Two runs evaluated on the same questions are compared on those questions only, each question
paired with itself: per split, accuracy of each run on the shared questions, and for every pair
of runs the 2×2 table (both right, only A, only B, both wrong), the accuracy difference with a
paired bootstrap interval (questions resampled with replacement) and McNemar's exact test (a
two-sided binomial test on the discordant questions). It reads ``predictions.jsonl`` of run
directories or ``kpod eval`` output directories and nothing else; questions only one run has are
counted, never silently dropped.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


class CompareError(ValueError):
    """Bad input for ``kpod compare`` (names the file and line)."""


@dataclass
class RunPredictions:
    label: str
    path: Path
    rows: dict[str, dict[str, dict[str, Any]]]  # split -> sample_id -> prediction row


def load_predictions(run_dir: str | Path) -> RunPredictions:
    """``RUN/predictions.jsonl`` by split and sample_id; errors name file:line."""
    path = Path(run_dir) / "predictions.jsonl"
    if not path.exists():
        raise CompareError(f"{path}: not found ({run_dir} is not a finished run or kpod eval directory)")
    rows: dict[str, dict[str, dict[str, Any]]] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            sid, split, correct = row["sample_id"], row["split"], row["correct"]
        except json.JSONDecodeError:
            raise CompareError(f"{path}:{n}: not a JSON line") from None
        except (KeyError, TypeError) as e:
            raise CompareError(f"{path}:{n}: missing field {e}") from None
        if not isinstance(correct, bool):
            raise CompareError(f"{path}:{n}: 'correct' must be true or false")
        per = rows.setdefault(split, {})
        if sid in per:
            raise CompareError(f"{path}:{n}: sample_id {sid!r} appears twice in split {split!r}")
        per[sid] = row
    return RunPredictions(Path(run_dir).name, path, rows)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts: under H0 each discordant
    question favours either run with probability 1/2, so p = P(|X - n/2| >= |b - n/2|),
    X ~ Binomial(n = b + c, 1/2) (equal to ``scipy.stats.binomtest(b, b + c).pvalue``)."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2.0 * tail)


def paired_bootstrap(
    a: np.ndarray, b: np.ndarray, *, n_resamples: int = 10_000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile interval of mean(a) - mean(b) with questions resampled in pairs."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    n = d.size
    if n == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    stats = np.empty(n_resamples)
    chunk = max(1, 2_000_000 // n)  # bounded memory for large splits
    for start in range(0, n_resamples, chunk):
        m = min(chunk, n_resamples - start)
        stats[start : start + m] = d[rng.integers(0, n, size=(m, n))].mean(axis=1)
    alpha = (1.0 - level) / 2
    lo, hi = np.quantile(stats, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def _labels(runs: list[RunPredictions]) -> None:
    """Unique short labels: the directory name, or more of the path where names repeat."""
    names = [r.label for r in runs]
    if len(set(names)) == len(names):
        return
    for r in runs:
        parts = r.path.parent.resolve().parts
        r.label = "/".join(parts[-2:])
    if len({r.label for r in runs}) != len(runs):
        for i, r in enumerate(runs):
            r.label = f"{i}:{r.label}"


def _question(ra: RunPredictions, rb: RunPredictions, split: str, sid: str) -> dict[str, Any]:
    pa, pb = ra.rows[split][sid], rb.rows[split][sid]
    return {"sample_id": sid, "gold": pa.get("gold"), "a_parsed": pa.get("parsed"),
            "b_parsed": pb.get("parsed"), "prompt": pa.get("prompt", "")}


def compare_runs(
    run_dirs: list[str | Path], *, n_resamples: int = 10_000, level: float = 0.95, seed: int = 0
) -> dict[str, Any]:
    """Per split shared by every run: accuracies on the shared questions and every pair's
    paired statistics and disagreements (see the module docstring)."""
    if len(run_dirs) < 2:
        raise CompareError("kpod compare needs at least two run directories")
    runs = [load_predictions(d) for d in run_dirs]
    _labels(runs)
    splits = [s for s in runs[0].rows if all(s in r.rows for r in runs)]
    out: dict[str, Any] = {
        "runs": [{"label": r.label, "path": str(r.path.parent)} for r in runs],
        "level": level, "n_resamples": n_resamples, "seed": seed,
        "splits_not_shared": sorted({s for r in runs for s in r.rows} - set(splits)),
        "splits": {},
    }
    for split in splits:
        ids = sorted(set.intersection(*(set(r.rows[split]) for r in runs)))
        entry: dict[str, Any] = {
            "n": len(ids),
            "only_in": {r.label: len(r.rows[split]) - len(ids) for r in runs},
            "accuracy": {},
            "pairs": [],
        }
        correct = {r.label: np.array([r.rows[split][i]["correct"] for i in ids], dtype=bool) for r in runs}
        for r in runs:
            entry["accuracy"][r.label] = float(correct[r.label].mean()) if ids else math.nan
        for ra, rb in itertools.combinations(runs, 2):
            a, b = correct[ra.label], correct[rb.label]
            a_only = [i for i, x, y in zip(ids, a, b) if x and not y]
            b_only = [i for i, x, y in zip(ids, a, b) if y and not x]
            lo, hi = paired_bootstrap(a, b, n_resamples=n_resamples, level=level, seed=seed)

            entry["pairs"].append({
                "a": ra.label, "b": rb.label, "n": len(ids),
                "both_right": int((a & b).sum()), "a_only": len(a_only), "b_only": len(b_only),
                "both_wrong": int((~a & ~b).sum()),
                "diff": float(a.mean() - b.mean()) if ids else math.nan,
                "ci_low": lo, "ci_high": hi,
                "mcnemar_p": mcnemar_exact(len(a_only), len(b_only)),
                "a_right_b_wrong": [_question(ra, rb, split, i) for i in a_only],
                "b_right_a_wrong": [_question(ra, rb, split, i) for i in b_only],
            })
        out["splits"][split] = entry
    return out


def to_markdown(result: dict[str, Any], show: int = 10) -> str:
    """The comparison as Markdown: accuracy per run, the paired statistics, disagreements."""
    pct = int(round(result["level"] * 100))
    lines = []
    for split, e in result["splits"].items():
        lines += [f"## {split} ({e['n']} shared questions)", ""]
        dropped = {k: v for k, v in e["only_in"].items() if v}
        if dropped:
            lines += ["Not shared by every run (left out): " + ", ".join(f"{k} {v}" for k, v in dropped.items()), ""]
        lines += ["| run | accuracy (%) |", "|---|---|"]
        lines += [f"| {k} | {100 * v:.1f} |" for k, v in e["accuracy"].items()]
        lines += ["", f"| A | B | A − B (pts) | {pct} % paired bootstrap | McNemar exact p | both right | A only | B only | both wrong |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for p in e["pairs"]:
            lines.append(f"| {p['a']} | {p['b']} | {100 * p['diff']:+.1f} | [{100 * p['ci_low']:+.1f}, {100 * p['ci_high']:+.1f}] | "
                         f"{p['mcnemar_p']:.3g} | {p['both_right']} | {p['a_only']} | {p['b_only']} | {p['both_wrong']} |")
        for p in e["pairs"]:
            for key, who in (("a_right_b_wrong", f"{p['a']} right, {p['b']} wrong"), ("b_right_a_wrong", f"{p['b']} right, {p['a']} wrong")):
                rows = p[key]
                if not rows:
                    continue
                lines += ["", f"{who}: {len(rows)} questions" + (f" (first {show})" if len(rows) > show else ""), ""]
                for q in rows[:show]:
                    lines.append(f"- `{q['sample_id']}` gold {q['gold']!s}, {p['a']}: {q['a_parsed']!s}, {p['b']}: {q['b_parsed']!s}")
        lines.append("")
    if result["splits_not_shared"]:
        lines.append("Splits not in every run (not compared): " + ", ".join(result["splits_not_shared"]))
    return "\n".join(lines) + "\n"
