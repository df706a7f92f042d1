"""Run recipes × seeds (in parallel processes) and tabulate accuracy: mean ± std per recipe.

    python bench/seeds.py recipes/std_cot.yaml recipes/kpod_full.yaml --seeds 0 1 2 \
        --out runs/seeds --jobs 3 [--set train.precision=fp32]

Each run is a plain `kpod run` in its own directory (`OUT/<recipe>-seed<k>`); the table is read
back from the runs' summary.json files and written to OUT/table.md and OUT/results.json.
(`kpod ablate` will supersede this script.)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def run_one(recipe: str, seed: int, out: Path, extra: list[str], threads: int) -> dict:
    name = Path(recipe).stem
    run_dir = out / f"{name}-seed{seed}"
    if (run_dir / "summary.json").exists():
        return {"recipe": name, "seed": seed, **json.loads((run_dir / "summary.json").read_text())}
    cmd = [sys.executable, "-m", "kpod.cli", "run", recipe, "--set", f"seed={seed}", "--out", str(run_dir), "--overwrite", "-q"]
    for s in extra:
        cmd += ["--set", s]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    t0 = time.time()
    with open(out / f"{name}-seed{seed}.log", "w") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, check=False)
    if proc.returncode != 0:
        return {"recipe": name, "seed": seed, "error": f"exit {proc.returncode}", "wall": time.time() - t0}
    return {"recipe": name, "seed": seed, **json.loads((run_dir / "summary.json").read_text())}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("recipes", nargs="+")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--out", default="runs/seeds")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--set", dest="sets", action="append", default=[])
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(r, s) for s in a.seeds for r in a.recipes]
    with ThreadPoolExecutor(a.jobs) as pool:
        results = list(pool.map(lambda j: run_one(j[0], j[1], out, a.sets, a.threads), jobs))
    rows = ["| recipe | split | mean | std | per seed |", "|---|---|---|---|---|"]
    for recipe in dict.fromkeys(Path(r).stem for r in a.recipes):
        mine = [r for r in results if r["recipe"] == recipe and "splits" in r]
        for split in ("validation", "test", "ood"):
            accs = [100 * r["splits"][split]["accuracy"] for r in mine if split in r["splits"]]
            if accs:
                sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
                rows.append(f"| {recipe} | {split} | {statistics.mean(accs):.1f} | {sd:.1f} | {', '.join(f'{x:.1f}' for x in accs)} |")
        for r in results:
            if r["recipe"] == recipe and "error" in r:
                rows.append(f"| {recipe} | seed {r['seed']} failed | {r['error']} | | |")
    table = "\n".join(rows)
    (out / "table.md").write_text(table + "\n")
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    print(table)


if __name__ == "__main__":
    main()
