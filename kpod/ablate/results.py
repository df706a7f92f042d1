"""A sweep's results, read from its run directories: per variant and split the mean, std and 95 %
interval of accuracy, the steps and the wall time relative to a reference variant; written as
``results.csv``, ``table.md``, ``plot.png`` and ``report.html``, and shown as a console table."""

from __future__ import annotations

import csv
import math
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rich.table import Table

from kpod.ablate.execution import RunResult, was_resumed

WALL_REFERENCE = "std_cot"  # the variant the relative wall-time column divides by
WALL_REFERENCES = (WALL_REFERENCE, "uniform")  # the first one present in a sweep (uniform: --preset weighting)
SPLITS = ("validation", "test", "ood")


def relative_wall(results: list[RunResult], reference: str = WALL_REFERENCE) -> tuple[dict[str, float], str]:
    """Each variant's mean ``summary.json`` ``wall_seconds.total`` (finished runs that were not
    resumed: a resumed run's summary times only its last process) divided by the
    ``reference`` variant's mean in the same sweep, and a note for the table. Without a finished
    reference variant the values are relative to the fastest variant instead (the note says so)."""

    def wall(r: RunResult) -> float | None:
        total = ((r.summary or {}).get("wall_seconds") or {}).get("total")
        # a resumed run's summary times its last process only: not a cost figure
        ok = isinstance(total, (int, float)) and total > 0 and not was_resumed(r.spec.run_dir)
        return float(total) if ok else None

    means = _variant_means(results, wall)
    if not means:
        return {}, "wall time: no summary.json has wall_seconds"
    if reference in means:
        ref, note = means[reference], f"wall time relative to {reference} (mean summary.json wall_seconds.total over seeds)"
    else:
        fastest = min(means, key=means.__getitem__)
        ref, note = means[fastest], f"wall time relative to the fastest variant, {fastest} (no {reference} variant in this sweep)"
    return {name: m / ref for name, m in means.items()}, note


def training_steps(results: list[RunResult]) -> dict[str, float]:
    """Each variant's mean optimiser steps (``summary.json`` ``train.steps``) over its finished
    seeds. Methods that train on several rationales a question take more steps per epoch: a
    difference in accuracy is only a method's when the steps match (docs/benchmarks.md,
    compute-matched control)."""

    def steps(r: RunResult) -> float | None:
        n = ((r.summary or {}).get("train") or {}).get("steps")
        return float(n) if isinstance(n, (int, float)) else None

    return _variant_means(results, steps)


def _variant_means(results: list[RunResult], value: Callable[[RunResult], float | None]) -> dict[str, float]:
    """Mean of ``value(run)`` per variant over the runs where it is not None."""
    per_variant: dict[str, list[float]] = {}
    for r in results:
        v = value(r)
        if v is not None:
            per_variant.setdefault(r.spec.variant.name, []).append(v)
    return {name: statistics.fmean(vs) for name, vs in per_variant.items()}


def flatten(summary: dict[str, Any]) -> dict[str, Any]:
    """Every scalar metric of a summary.json as ``a.b.c`` columns."""
    out: dict[str, Any] = {}

    def walk(prefix: str, obj: Any) -> None:
        if isinstance(obj, dict):
            for k, v in obj.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(obj, (int, float, str, bool)) or obj is None:
            out[prefix] = obj

    walk("", summary)
    return out


def confidence_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float, float]:
    """(mean, sample std, low, high) with a Student-t interval; n = 1 gives a zero-width interval."""
    from scipy import stats

    n = len(values)
    mean = statistics.fmean(values)
    if n < 2:
        return mean, 0.0, mean, mean
    sd = statistics.stdev(values)
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
    return mean, sd, mean - half, mean + half


def aggregate(results: list[RunResult]) -> list[dict[str, Any]]:
    """Per variant and split: n, mean, std and the 95 % interval of accuracy (in %)."""
    rows = []
    by_variant: dict[str, list[RunResult]] = {}
    for r in results:
        by_variant.setdefault(r.spec.variant.name, []).append(r)
    for name, rs in by_variant.items():
        ok = [r for r in rs if r.summary is not None]
        for split in SPLITS:
            accs = [100.0 * r.summary["splits"][split]["accuracy"] for r in ok if split in r.summary.get("splits", {})]  # type: ignore[index]
            if not accs:
                continue
            mean, sd, lo, hi = confidence_interval(accs)
            rows.append({"variant": name, "split": split, "n": len(accs), "mean": mean, "std": sd, "ci_low": lo, "ci_high": hi,
                         "failed": sum(r.status == "failed" for r in rs)})
    return rows


def write_outputs(results: list[RunResult], rows: list[dict[str, Any]], out: Path) -> None:
    """``OUT/results.csv``, ``table.md``, ``plot.png`` (with matplotlib) and ``report.html``."""
    out.mkdir(parents=True, exist_ok=True)
    write_results_csv(results, out / "results.csv")
    (out / "table.md").write_text(table_markdown(results, rows), encoding="utf-8")
    plot(rows, out / "plot.png")
    write_sweep_report(results, rows, out)


def write_results_csv(results: list[RunResult], path: Path) -> None:
    """One row per run: its variant's fields, seed, status, error and every scalar of its summary."""
    flat = []
    for r in results:
        row: dict[str, Any] = {"variant": r.spec.variant.name, **r.spec.variant.fields, "seed": r.spec.seed, "status": r.status,
                               "error": r.error or "", "run_wall_seconds": round(r.wall, 2), "run_dir": str(r.spec.run_dir)}
        if r.summary is not None:
            row.update(flatten(r.summary))
        flat.append(row)
    columns = list(dict.fromkeys(k for row in flat for k in row))
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(flat)


def table_markdown(results: list[RunResult], rows: list[dict[str, Any]]) -> str:
    """``table.md``: the :func:`aggregate` rows with the mean steps and the relative wall time per
    variant, then every failed run with its error."""
    names = {r.spec.variant.name for r in results}
    rel, note = relative_wall(results, next((n for n in WALL_REFERENCES if n in names), WALL_REFERENCE))
    steps = training_steps(results)
    lines = ["| variant | split | n | mean ± std (%) | 95 % CI | failed | steps | wall × |", "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        wall = f"{rel[row['variant']]:.2f}" if row["variant"] in rel else "–"
        n_steps = f"{steps[row['variant']]:.0f}" if row["variant"] in steps else "–"
        lines.append(f"| {row['variant']} | {row['split']} | {row['n']} | {row['mean']:.1f} ± {row['std']:.1f} | "
                     f"[{row['ci_low']:.1f}, {row['ci_high']:.1f}] | {row['failed']} | {n_steps} | {wall} |")
    lines.append("\nsteps: mean optimiser steps over seeds; compare methods at equal steps (more rationales a question = more steps).")
    lines.append(f"\nwall ×: {note}.")
    for r in results:
        if r.status == "failed":
            lines.append(f"\nFailed: {r.spec.variant.name} seed {r.spec.seed}: {r.error}")
    return "\n".join(lines) + "\n"


def console_table(rows: list[dict[str, Any]], title: str) -> Table:
    """The :func:`aggregate` rows as the table ``kpod ablate`` prints."""
    table = Table(title=title)
    for col in ("variant", "split", "n", "mean ± std (%)", "95 % CI", "failed"):
        table.add_column(col)
    for row in rows:
        table.add_row(row["variant"], row["split"], str(row["n"]), f"{row['mean']:.1f} ± {row['std']:.1f}",
                      f"[{row['ci_low']:.1f}, {row['ci_high']:.1f}]", str(row["failed"]))
    return table


def progress_line(r: RunResult) -> str:
    """One finished run as ``kpod ablate`` reports it: status, variant, seed, and its test accuracy
    (validation for recipes without a test split) or the first line of its error."""
    splits = r.summary["splits"] if r.summary else {}
    split = "test" if "test" in splits else "validation"
    acc = splits.get(split, {}).get("accuracy")
    note = f"{split} {acc:.1%}" if acc is not None else ((r.error or "").splitlines() or [""])[0][:120]
    return f"  {r.status:7s} {r.spec.variant.name} seed {r.spec.seed}: {note}"


def write_sweep_report(results: list[RunResult], rows: list[dict[str, Any]], out: Path) -> Path:
    """``OUT/report.html``: table.md's numbers with plots, and every run with its status."""
    from kpod.reports.sweep import build_sweep_report
    from kpod.runs import atomic_write_text

    runs = [{"variant": r.spec.variant.name, "seed": r.spec.seed, "status": r.status, "run_dir": str(r.spec.run_dir),
             "error": r.error or "",
             "accuracy": {k: v["accuracy"] for k, v in ((r.summary or {}).get("splits") or {}).items()}}
            for r in results]
    title = results[0].spec.variant.recipe.name if results else out.name
    path = out / "report.html"
    atomic_write_text(path, build_sweep_report(title, rows, runs, out))
    return path


def plot(rows: list[dict[str, Any]], path: Path, split: str = "test") -> bool:
    """Accuracy per variant with its 95 % interval; False (no file) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    sel = [r for r in rows if r["split"] == split] or rows
    if not sel:
        return False
    fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(sel)), 4))
    x = range(len(sel))
    means = [r["mean"] for r in sel]
    err = [[m - r["ci_low"] for m, r in zip(means, sel)], [r["ci_high"] - m for m, r in zip(means, sel)]]
    ax.bar(x, means, yerr=err, capsize=4, color="#4c72b0")
    ax.set_xticks(list(x))
    ax.set_xticklabels([r["variant"] for r in sel], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(f"{sel[0]['split']} accuracy (%)")
    ax.set_title(f"mean and 95 % CI over seeds (n = {max(r['n'] for r in sel)})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
