"""CPU-scale check: SmolLM2-135M on SVAMP, std_cot vs kpod_full, one seed, about an hour on 2 cores.

    python bench/cpu_check_smollm2.py --out runs/smollm2_cpu_check            # the full check
    python bench/cpu_check_smollm2.py --out /tmp/c --questions 4 --epochs 1 --eval-limit 8   # smoke

Both runs use recipes/smollm2/svamp/ (the std_cot ablation and kpod_full) on the first
``--questions`` SVAMP training questions (every correct GPT-3.5 rationale of each, ~6.7 a
question) and evaluate on the first ``--eval-limit`` of the 150 validation questions — the same
data, steps and seed for both. Sizes were chosen from measured CPU rates (~90 training
tokens/s with bf16 autocast, ~1.3 s per validation generation, mask learning ~12 s a step at
batch 4 with 3 prefixes): the defaults (40 questions, 2 epochs, 150 validation questions) take
about 40-60 minutes on 2 quiet cores. Writes OUT/table.md and OUT/results.json: validation
accuracy with a 95 % Wilson interval per run, and the paired difference with a 95 % interval
(McNemar-style, from the per-question agreement in predictions.jsonl).
A run whose directory already holds a finished run of the same resolved recipe is not run again
(so changing one recipe reruns only that side). A `slow` test (tests/test_smollm2_bench.py) runs
it at smoke scale; never in CI.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SVAMP = ROOT.parent / "shared" / "data" / "mcc_kd" / "SVAMP"
RECIPES = {
    "std_cot": ROOT / "recipes" / "smollm2" / "svamp" / "ablations" / "std_cot.yaml",
    "kpod_full": ROOT / "recipes" / "smollm2" / "svamp" / "kpod_full.yaml",
}


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return (float("nan"), float("nan"))
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (c - h, c + h)


def correct_by_id(run_dir: Path) -> dict[str, bool]:
    out = {}
    with open(run_dir / "predictions.jsonl", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            if row.get("split", "validation") == "validation":
                out[row["sample_id"]] = bool(row["correct"])
    return out


def finished(run_dir: Path, recipe: Path, sets: list[str]) -> bool:
    """True when ``run_dir`` holds a finished run of exactly this recipe with these overrides."""
    from kpod.recipe.loading import dump_recipe, load_recipe

    summary, resolved = run_dir / "summary.json", run_dir / "recipe.resolved.yaml"
    if not (summary.is_file() and resolved.is_file()) or json.loads(summary.read_text()).get("finished") is not True:
        return False
    return resolved.read_text(encoding="utf-8") == dump_recipe(load_recipe(recipe, sets))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--questions", type=int, default=40, help="SVAMP training questions (all their correct rationales)")
    ap.add_argument("--epochs", type=int, default=2, help="N_e (T = N_e // 2, at least 1)")
    ap.add_argument("--eval-limit", type=int, default=150, help="validation questions")
    ap.add_argument("--ml-steps", type=int, default=40, help="mask-learning steps (batch 4)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    out = Path(args.out).resolve()
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    (data / "train.json").write_text(json.dumps(json.loads((SVAMP / "train.json").read_text())[: args.questions]))
    (data / "dev.json").write_text(json.dumps(json.loads((SVAMP / "dev.json").read_text())[: args.eval_limit]))
    sets = [
        f"seed={args.seed}",
        f"data.source.params.files.train={data / 'train.json'}",
        f"data.source.params.files.validation={data / 'dev.json'}",
        f"train.epochs={args.epochs}",
        f"train.threads={args.threads}",
        "train.batch_size=8",
        "train.warmup_steps=5",
        "train.precision=bf16",
        f"scheduler.params.T={max(1, args.epochs // 2)}",
        f"weighting.params.max_steps={args.ml_steps}",
        "weighting.params.batch_size=4",
        "eval.batch_size=16",
        "eval.max_new_tokens=200",
    ]
    results = {}
    for name, recipe in RECIPES.items():
        run_dir = out / name
        run_sets = [s for s in sets if not (name == "std_cot" and s.startswith(("weighting.", "scheduler.")))]
        if finished(run_dir, recipe, run_sets):
            print(f"{name}: finished earlier with the same recipe, not run again", flush=True)
            wall = json.loads((run_dir / "summary.json").read_text())["wall_seconds"]["total"]
        else:
            cmd = [sys.executable, "-m", "kpod.cli", "run", str(recipe), "--out", str(run_dir), "--overwrite", "-q"]
            cmd += [a for s in run_sets for a in ("--set", s)]
            print("+", " ".join(cmd), flush=True)
            t = time.monotonic()
            rc = subprocess.run(cmd, cwd=ROOT).returncode
            if rc != 0:
                sys.exit(f"{name}: kpod run exited {rc}")
            wall = time.monotonic() - t
        ok = correct_by_id(run_dir)
        k, n = sum(ok.values()), len(ok)
        results[name] = {"correct": k, "n": n, "accuracy": k / n if n else float("nan"),
                         "ci95": wilson(k, n), "wall_s": round(wall, 1), "by_id": ok}
    a, b = results["kpod_full"]["by_id"], results["std_cot"]["by_id"]
    ids = sorted(set(a) & set(b))
    diffs = [int(a[i]) - int(b[i]) for i in ids]
    mean = sum(diffs) / len(diffs) if diffs else float("nan")
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1)) if len(diffs) > 1 else float("nan")
    half = 1.96 * sd / math.sqrt(len(diffs)) if len(diffs) > 1 else float("nan")
    lines = ["| run | validation accuracy | 95 % CI (Wilson) | n | wall s |", "|---|---|---|---|---|"]
    for name, r in results.items():
        lo, hi = r["ci95"]
        lines.append(f"| {name} | {r['accuracy']:.3f} | [{lo:.3f}, {hi:.3f}] | {r['n']} | {r['wall_s']} |")
    lines.append(f"\nkpod_full − std_cot (paired, same questions): {mean:+.3f} ± {half:.3f} (95 %)")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    for r in results.values():
        r.pop("by_id")
    (out / "results.json").write_text(json.dumps({"args": vars(args), "runs": results,
                                                  "diff": {"mean": mean, "ci95_half": half, "n": len(diffs)}}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
