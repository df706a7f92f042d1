"""Per-operation error analysis of an ablation sweep: where each variant's wrong chains first fail.

    python bench/error_analysis.py runs/paper [--split test] [--variants kpod,std_cot] [--out FILE.md]

For every ``SWEEP/<variant>/seed<k>/`` with a ``predictions.jsonl``, the gold rationales are
re-read from the run's own ``recipe.resolved.yaml`` (its data source, matched by ``sample_id``)
and every wrong prediction is filed under its first error (:mod:`kpod.reports.arith_errors`).
Seeds of a variant are pooled. Printed (and written with ``--out``) as markdown: the first-error
categories as shares of the wrong answers, arithmetic-fact errors by operator, accuracy by gold
chain length, and the validation accuracy of every model-selection evaluation (mean over seeds;
``summary.json`` ``selection.evaluations``), which shows whether a variant has reached a plateau.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from kpod.compare import load_predictions
from kpod.data.load import load_data
from kpod.recipe import load_recipe
from kpod.reports.arith_errors import CATEGORIES, ErrorTally


def gold_rationales(run_dir: Path, split: str, cache: dict[str, dict[str, str]]) -> dict[str, str]:
    """sample_id → gold rationale of ``split``, from the run's resolved recipe (cached by data section)."""
    recipe = load_recipe(run_dir / "recipe.resolved.yaml")
    key = json.dumps(recipe.data.model_dump(mode="json"), sort_keys=True) + f"|{recipe.seed}"
    if key not in cache:
        splits = load_data(recipe, require_train=False)
        cache[key] = {r.sample_id: r.rationale for r in splits.get(split, [])}
    return cache[key]


def tally_variant(runs: list[Path], split: str, cache: dict[str, dict[str, str]]) -> ErrorTally:
    tally = ErrorTally()
    for run in runs:
        gold = gold_rationales(run, split, cache)
        for sid, row in load_predictions(run).rows.get(split, {}).items():
            if sid not in gold:
                raise SystemExit(f"{run}/predictions.jsonl: sample_id {sid!r} is not in the recipe's {split} split")
            tally.add(row["output"], gold[sid], row["correct"])
    return tally


def to_markdown(tallies: dict[str, tuple[int, ErrorTally]], split: str) -> str:
    lines = [f"First error of each wrong {split} answer, as % of that variant's wrong answers (seeds pooled).", "",
             "| variant | seeds | accuracy | wrong | " + " | ".join(CATEGORIES) + " |",
             "|---" * (4 + len(CATEGORIES)) + "|"]
    for name, (seeds, t) in tallies.items():
        shares = [f"{100 * t.categories[c] / max(t.wrong, 1):.1f}" for c in CATEGORIES]
        lines.append(f"| {name} | {seeds} | {100 * (t.n - t.wrong) / max(t.n, 1):.1f} | {t.wrong} | " + " | ".join(shares) + " |")
    ops = sorted({op for _, t in tallies.values() for op in t.arithmetic_by_op})
    lines += ["", "Arithmetic-fact errors (right operands, wrong result) by operator, counts:", "",
              "| variant | " + " | ".join(ops) + " |", "|---" * (1 + len(ops)) + "|"]
    for name, (_, t) in tallies.items():
        lines.append(f"| {name} | " + " | ".join(str(t.arithmetic_by_op[o]) for o in ops) + " |")
    lengths = sorted({k for _, t in tallies.values() for k in t.n_by_steps})
    lines += ["", "Accuracy (%) by gold chain length (steps):", "",
              "| variant | " + " | ".join(str(k) for k in lengths) + " |", "|---" * (1 + len(lengths)) + "|"]
    for name, (_, t) in tallies.items():
        cells = [f"{100 * (t.n_by_steps[k] - t.wrong_by_steps[k]) / t.n_by_steps[k]:.1f}" if t.n_by_steps[k] else "–"
                 for k in lengths]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def validation_curve(runs: list[Path]) -> dict[int, list[float]]:
    """step → the validation accuracies of the selection evaluations at that step, one per seed."""
    curve: dict[int, list[float]] = {}
    for run in runs:
        summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
        for ev in (summary.get("selection") or {}).get("evaluations", []):
            curve.setdefault(int(ev["step"]), []).append(100 * float(ev["accuracy"]))
    return curve


def curves_markdown(curves: dict[str, dict[int, list[float]]]) -> str:
    steps = sorted({k for c in curves.values() for k in c})
    lines = ["Validation accuracy (%) at each model-selection evaluation, mean over seeds:", "",
             "| variant | " + " | ".join(f"step {k}" for k in steps) + " |", "|---" * (1 + len(steps)) + "|"]
    for name, c in curves.items():
        lines.append(f"| {name} | " + " | ".join(f"{sum(c[k]) / len(c[k]):.1f}" if k in c else "–" for k in steps) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweep", type=Path, help="a kpod ablate output directory (VARIANT/seedK/ run directories)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--variants", default=None, help="comma-separated variant directories (default: all)")
    ap.add_argument("--out", type=Path, default=None, help="also write the markdown here")
    args = ap.parse_args(argv)
    names = args.variants.split(",") if args.variants else sorted(p.name for p in args.sweep.iterdir() if p.is_dir())
    cache: dict[str, dict[str, str]] = {}
    tallies: dict[str, tuple[int, ErrorTally]] = {}
    curves: dict[str, dict[int, list[float]]] = {}
    for name in names:
        runs = sorted(p for p in (args.sweep / name).glob("seed*") if (p / "predictions.jsonl").exists())
        if not runs:
            print(f"{args.sweep / name}: no finished run, skipped", file=sys.stderr)
            continue
        tallies[name] = (len(runs), tally_variant(runs, args.split, cache))
        curves[name] = validation_curve(runs)
    text = to_markdown(tallies, args.split) + "\n" + curves_markdown(curves)
    print(text)
    if args.out is not None:
        args.out.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
