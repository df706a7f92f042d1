"""``kpod ablate``'s sweep report: ``report.html`` beside ``table.md`` (same numbers, one page)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kpod.reports import figures
from kpod.reports.figures import ReportError
from kpod.reports.html import esc, note, page, png_img, table


def build_sweep_report(title: str, agg: Sequence[dict[str, Any]], runs: Sequence[dict[str, Any]], out: Path) -> str:
    """``agg``: kpod.ablate.aggregate rows (variant, split, n, mean, std, ci_low, ci_high, failed);
    ``runs``: one dict per run (variant, seed, status, run_dir, error, accuracy per split)."""
    sections: list[tuple[str, str]] = []
    splits = list(dict.fromkeys(r["split"] for r in agg))
    for split in splits:
        rows = [r for r in agg if r["split"] == split]
        body = table(["variant", "runs", "mean ± std (%)", "95 % CI (%)", "failed"],
                     [(r["variant"], r["n"], f"{r['mean']:.1f} ± {r['std']:.1f}", f"[{r['ci_low']:.1f}, {r['ci_high']:.1f}]", r["failed"])
                      for r in rows], numeric=(1, 2, 3, 4))
        try:
            body = png_img(figures.bars_with_ci(rows, f"{split} accuracy (%)", f"{split}: mean and 95 % CI over seeds"),
                           f"{split} accuracy per variant") + body
        except ReportError as e:  # matplotlib is optional: the tables still tell everything
            body = note(str(e)) + body
        sections.append((f"{split} accuracy", body))
    if not splits:
        sections.append(("Accuracy", note("No finished run evaluated a split.")))
    acc_cols = list(dict.fromkeys(s for r in runs for s in r.get("accuracy", {})))
    rows = []
    for r in runs:
        try:
            where = str(Path(r["run_dir"]).resolve().relative_to(out.resolve()))
        except ValueError:
            where = r["run_dir"]
        accs = [f"{100 * r['accuracy'][s]:.1f}" if s in r.get("accuracy", {}) else "–" for s in acc_cols]
        rows.append((r["variant"], r["seed"], r["status"], *accs, where))
    sections.append(("Runs", table(["variant", "seed", "status", *[f"{s} (%)" for s in acc_cols], "run directory"], rows,
                                   numeric=tuple(range(3, 3 + len(acc_cols))))
                     + note("kpod report RUN_DIR makes the page of one run; kpod compare RUN_A RUN_B compares two question by question.")))
    failed = [r for r in runs if r["status"] == "failed"]
    if failed:
        sections.append(("Failed runs", "".join(f"<p><b>{esc(r['variant'])} seed {esc(r['seed'])}</b></p><pre>{esc(r['error'])}</pre>"
                                                for r in failed)))
    return page(f"kpod ablate: {title}", str(out.resolve()), sections)
