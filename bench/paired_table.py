"""Markdown tables of a `kpod ablate` sweep, paired with a reference variant by seed.

    python bench/paired_table.py runs/keypoints --reference std_cot [--split test]

Reads OUT/<variant>/seed<k>/summary.json only (finished runs; an unfinished or missing run is
listed under the tables with its count, never silently dropped). Prints two tables:

1. per variant: seeds, optimizer steps, the split's accuracy per seed, mean ± std, validation and
   OOD means, keypoint AUC of the run's weights per seed (`summary.json` weighting.keypoint_auc;
   "–" where the run has none: uniform weights, dynamic strategies);
2. paired with the reference: per-seed differences (same seed, accuracy points) and their mean,
   std and 95 % t-interval over seeds (n − 1 degrees of freedom).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from kpod.ablate import confidence_interval


def load_sweep(out: Path) -> tuple[dict[str, dict[int, dict]], list[str]]:
    """{variant: {seed: summary}} for finished runs, and the run directories without a summary."""
    runs: dict[str, dict[int, dict]] = {}
    unfinished = []
    for seed_dir in sorted(out.glob("*/seed*")):
        if not seed_dir.is_dir():
            continue
        summary = seed_dir / "summary.json"
        if not summary.exists():
            unfinished.append(str(seed_dir))
            continue
        data = json.loads(summary.read_text(encoding="utf-8"))
        runs.setdefault(seed_dir.parent.name, {})[int(data["seed"])] = data
    return runs, unfinished


def accuracy(summary: dict, split: str) -> float | None:
    value = (summary.get("splits") or {}).get(split, {}).get("accuracy")
    return None if value is None else 100.0 * float(value)


def t_interval(values: list[float]) -> tuple[float, float, float, float]:
    """kpod ablate's mean, std and 95 % t-interval; nan std and ends for fewer than two values
    (printed "–", not a zero-width interval)."""
    mean, std, lo, hi = confidence_interval(values)
    return (mean, std, lo, hi) if len(values) > 1 else (mean, float("nan"), float("nan"), float("nan"))


def fmt(value: float | None, sign: bool = False) -> str:
    if value is None or value != value:
        return "–"
    return f"{value:+.1f}" if sign else f"{value:.1f}"


def auc_text(summary: dict) -> str:
    """The run's keypoint AUC; "–" without one, for uniform weights (0.5 by definition) and for a
    dynamic strategy (its static weights are uniform; its signal changes at every step)."""
    weighting = summary.get("weighting") or {}
    auc = weighting.get("keypoint_auc")
    if not auc or auc.get("uniform") or weighting.get("dynamic"):
        return "–"
    return f"{auc['auc']:.3f}"


def variant_rows(runs: dict[str, dict[int, dict]], split: str) -> list[str]:
    rows = ["| variant | seeds | steps | " + split + " per seed | mean ± std | validation | OOD | keypoint AUC per seed | wall s (mean) |",
            "|---|---|---|---|---|---|---|---|---|"]
    for name, by_seed in runs.items():
        seeds = sorted(by_seed)
        accs = [accuracy(by_seed[s], split) for s in seeds]
        mean, std, _, _ = t_interval([a for a in accs if a is not None])
        val = [accuracy(by_seed[s], "validation") for s in seeds]
        ood = [accuracy(by_seed[s], "ood") for s in seeds]
        steps = sorted({by_seed[s]["train"]["steps"] for s in seeds})
        wall = statistics.fmean(by_seed[s]["wall_seconds"]["total"] for s in seeds)
        rows.append(
            f"| {name} | {','.join(map(str, seeds))} | {'/'.join(map(str, steps))} | "
            f"{' / '.join(fmt(a) for a in accs)} | {fmt(mean)} ± {fmt(std)} | "
            f"{fmt(statistics.fmean(v for v in val if v is not None))} | "
            f"{fmt(statistics.fmean(v for v in ood if v is not None))} | "
            f"{' / '.join(auc_text(by_seed[s]) for s in seeds)} | {wall:.0f} |"
        )
    return rows


def paired_rows(runs: dict[str, dict[int, dict]], reference: str, split: str) -> list[str]:
    ref = runs[reference]
    rows = [f"| variant − {reference} | seeds | per seed | mean ± std | 95 % CI (t) |", "|---|---|---|---|---|"]
    for name, by_seed in runs.items():
        if name == reference:
            continue
        seeds = [s for s in sorted(by_seed) if s in ref]
        diffs = [accuracy(by_seed[s], split) - accuracy(ref[s], split) for s in seeds]
        if not diffs:
            continue
        mean, std, lo, hi = t_interval(diffs)
        rows.append(f"| {name} | {','.join(map(str, seeds))} | {' / '.join(fmt(d, True) for d in diffs)} | "
                    f"{fmt(mean, True)} ± {fmt(std)} | [{fmt(lo, True)}, {fmt(hi, True)}] |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep", type=Path, help="a kpod ablate --out directory")
    parser.add_argument("--reference", default="std_cot", help="the variant others are paired with")
    parser.add_argument("--split", default="test")
    args = parser.parse_args()
    runs, unfinished = load_sweep(args.sweep)
    if args.reference not in runs:
        raise SystemExit(f"{args.sweep}: no finished run of the reference variant {args.reference!r}")
    print("\n".join(variant_rows(runs, args.split)))
    print()
    print("\n".join(paired_rows(runs, args.reference, args.split)))
    if unfinished:
        print(f"\n{len(unfinished)} run(s) without summary.json (not in the tables): {', '.join(unfinished)}")


if __name__ == "__main__":
    main()
