#!/usr/bin/env python
"""How the kpod_knapsack plan builder scales with the number of questions.

    python bench/plan_scaling.py                      # n = 100000 and 1000000, T = 50
    python bench/plan_scaling.py --n 10000 100000 --T 20

Synthetic data: each question has 2–8 steps (uniform), step difficulties are lognormal around
1 nat (median 1, sigma 0.5 by default), questions fall into 5 clusters uniformly; default
KPOD parameters (C0 = 0.3 B, p = 0.5, beta = 12, delta_s = 1). Each size runs in a fresh
subprocess, so its peak resident memory is its own. Timed: ``build_plan(..., as_arrays=True)``
(the array path: reading the difficulty lists, every stage's selection and bookkeeping); the
conversion of the stages to Python lists (the default return type) is timed separately.
numpy is limited to 2 threads. Goal: <= 20 s for 10^6 questions at T = 50, and
t(10^6) / t(10^5) <= 12 (n log n would give about 12).
"""

from __future__ import annotations

import os

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ.setdefault(var, "2")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_single(n: int, T: int, sigma: float, seed: int) -> dict:
    import numpy as np

    from kpod.schedulers.kpod_knapsack import build_plan

    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, 9, n)
    flat = rng.lognormal(0.0, sigma, int(lengths.sum()))
    diffs = [a.tolist() for a in np.split(flat, np.cumsum(lengths)[:-1])]
    clusters = rng.integers(0, 5, n).tolist()
    del flat
    rss_before = rss_mib()

    t0, c0 = time.perf_counter(), time.process_time()
    stages, info = build_plan(diffs, clusters, T, as_arrays=True)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak_build = peak_rss_mib()

    t1 = time.perf_counter()
    as_lists = [s.tolist() for s in stages]
    list_seconds = time.perf_counter() - t1
    del as_lists
    last = info["stages"][-1]
    return {
        "n": n,
        "T": T,
        "seconds": seconds,
        "cpu_seconds": cpu,
        "per_stage": seconds / len(info["stages"]),
        "list_seconds": list_seconds,
        "rss_before_mib": rss_before,
        "peak_rss_mib": peak_build,
        "peak_rss_with_lists_mib": peak_rss_mib(),
        "steps": int(lengths.sum()),
        "final_H_over_B": last["achieved_H"] / info["B"],
        "selected_total": sum(r["selected"] for r in info["stages"]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--n", type=int, nargs="+", default=[100_000, 1_000_000], help="numbers of questions"
    )
    ap.add_argument("--T", type=int, default=50, help="number of stages")
    ap.add_argument("--sigma", type=float, default=0.5, help="lognormal sigma of step difficulties")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--single", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.single is not None:
        print(json.dumps(run_single(args.single, args.T, args.sigma, args.seed)))
        return

    import numpy as np

    print(
        f"python {platform.python_version()}, numpy {np.__version__}, {platform.machine()}, "
        f"{os.cpu_count()} CPUs; T = {args.T}, sigma = {args.sigma}, K = 5, threads <= 2"
    )
    rows = []
    for n in args.n:
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--single",
                str(n),
                "--T",
                str(args.T),
                "--sigma",
                str(args.sigma),
                "--seed",
                str(args.seed),
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    head = f"{'n':>9} {'steps':>9} {'seconds':>8} {'cpu s':>7} {'s/stage':>8} {'lists s':>8} {'peak RSS MiB':>13} {'(input)':>8} {'H_T/B':>6}"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['n']:>9} {r['steps']:>9} {r['seconds']:>8.2f} {r['cpu_seconds']:>7.2f} {r['per_stage']:>8.4f} "
            f"{r['list_seconds']:>8.2f} {r['peak_rss_mib']:>13.0f} {r['rss_before_mib']:>8.0f} {r['final_H_over_B']:>6.3f}"
        )
    by_n = {r["n"]: r for r in rows}
    if 100_000 in by_n and 1_000_000 in by_n:
        ratio = by_n[1_000_000]["seconds"] / by_n[100_000]["seconds"]
        print(
            f"t(1e6)/t(1e5) = {ratio:.1f}  (goal <= 12; 1e6 goal <= 20 s: {by_n[1_000_000]['seconds']:.1f} s)"
        )
    print(
        "seconds: wall time of build_plan(as_arrays=True); per stage = seconds / stages computed "
        "(T, the top-up included); lists: stages to Python lists; peak RSS includes the input "
        "lists (RSS before the call in parentheses)"
    )


if __name__ == "__main__":
    main()
