#!/usr/bin/env python
"""Peak memory (and time) of the kd loss's divergence term: kpod's chunked heads vs a naive one.

    python bench/kd_memory.py                     # vocab 49,152 (SmolLM2), student 576 / teacher 960 wide, 4 × 512 tokens
    python bench/kd_memory.py --repeats 1 --threads 1

Four sides, each in its own fresh process:

* ``naive_online``: the student's and the teacher's full ``[B, T, V]`` logits, log-softmax of both,
  forward KL per token (what a from-scratch KD loss does);
* ``chunked_online``: :func:`kpod.losses.online_teacher.linear_divergence` (both heads a chunk of
  target rows at a time, the backward pass recomputing them) — ``loss.params.teacher_model``;
* ``naive_topk``: the student's full logits, log-softmax, gathered at a stored top-20;
* ``chunked_topk``: :func:`kpod.losses.divergence.linear_logprobs_at` — ``loss.params.teacher_store``.

The head inputs (student hidden, requiring grad; the teacher's, without) and both head weights are
allocated first; the figure is the growth of the process's peak RSS over one forward + backward of
the divergence summed over target tokens (fp32, CPU; on CUDA ``max_memory_allocated``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SIDES = ("naive_online", "chunked_online", "naive_topk", "chunked_topk")


def child(args: argparse.Namespace) -> dict:
    import torch
    import torch.nn.functional as F

    from kpod.losses.divergence import bucket_logprobs, linear_logprobs_at, token_divergence
    from kpod.losses.online_teacher import linear_divergence

    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    n = args.batch * args.seq
    hidden = torch.randn(n, args.hidden, generator=g).to(dev).requires_grad_()
    weight = torch.randn(args.vocab, args.hidden, generator=g).mul_(0.02).to(dev).requires_grad_()
    t_hidden = torch.randn(n, args.teacher_hidden, generator=g).to(dev)
    # built on the meta device and filled in place: no transient copy raises the peak before the measurement
    t_head = torch.nn.Linear(args.teacher_hidden, args.vocab, bias=False, device="meta").to_empty(device=dev)
    with torch.no_grad():
        t_head.weight.normal_(generator=g).mul_(0.02)
    ids = torch.randint(0, args.vocab, (n, 20), generator=g).to(dev)
    t_logp = torch.log_softmax(torch.randn(n, 20, generator=g), -1).to(dev) - 1.0
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    if args.side == "naive_online":
        p = torch.log_softmax(F.linear(hidden, weight), -1)
        with torch.no_grad():
            q = torch.log_softmax(t_head(t_hidden), -1)
        div = token_divergence(p, q, "forward_kl")
    elif args.side == "chunked_online":
        div = linear_divergence(hidden, weight, None, t_hidden, t_head, "forward_kl", 0.5, 1.0, args.chunk)
    else:
        if args.side == "naive_topk":
            s = torch.log_softmax(F.linear(hidden, weight), -1).gather(1, ids)
        else:
            s = linear_logprobs_at(hidden, weight, None, ids, args.chunk)
        s_b, t_b = bucket_logprobs(s, t_logp, torch.ones_like(ids, dtype=torch.bool), "tail")
        div = token_divergence(s_b, t_b, "forward_kl")
    loss = div.sum() / n
    loss.backward()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = {"side": args.side, "loss": float(loss), "grad_norm_h": float(hidden.grad.norm()),
           "grad_norm_w": float(weight.grad.norm()), "seconds": round(wall, 3),
           "peak_growth_mib": round((after - before) / 1024, 1)}
    if dev.type == "cuda":
        out["peak_growth_mib"] = round((torch.cuda.max_memory_allocated() - base) / 2**20, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--vocab", type=int, default=49152)
    ap.add_argument("--hidden", type=int, default=576)
    ap.add_argument("--teacher-hidden", type=int, default=960)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--chunk", type=int, default=256, help="target tokens per chunk (the auto default)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if args.side:
        print("RESULT " + json.dumps(child(args)))
        return
    base = [sys.executable, __file__] + [f"--{k.replace('_', '-')}={getattr(args, k)}" for k in
                                          ("vocab", "hidden", "teacher_hidden", "batch", "seq", "chunk", "threads", "device")]
    runs: dict[str, list[dict]] = {s: [] for s in SIDES}
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    for i in range(args.repeats):
        for side in (SIDES if i % 2 == 0 else SIDES[::-1]):
            p = subprocess.run([*base, f"--side={side}"], capture_output=True, text=True, check=True, env=env)
            runs[side].append(json.loads(next(x for x in p.stdout.splitlines() if x.startswith("RESULT "))[7:]))
            print(side, runs[side][-1], file=sys.stderr)
    best = {s: {"peak_growth_mib": min(r["peak_growth_mib"] for r in rs), "seconds": min(r["seconds"] for r in rs),
                "loss": rs[-1]["loss"], "grad_norm_w": rs[-1]["grad_norm_w"]} for s, rs in runs.items()}
    out = {
        "machine": platform.platform(), "device": args.device, "vocab": args.vocab, "hidden": args.hidden,
        "teacher_hidden": args.teacher_hidden, "tokens": args.batch * args.seq, "chunk": args.chunk, "sides": best,
        "online_memory_ratio": round(best["naive_online"]["peak_growth_mib"] / max(best["chunked_online"]["peak_growth_mib"], 0.1), 2),
        "topk_memory_ratio": round(best["naive_topk"]["peak_growth_mib"] / max(best["chunked_topk"]["peak_growth_mib"], 0.1), 2),
        "online_loss_rel_diff": abs(best["naive_online"]["loss"] - best["chunked_online"]["loss"]) / abs(best["naive_online"]["loss"]),
        "topk_loss_rel_diff": abs(best["naive_topk"]["loss"] - best["chunked_topk"]["loss"]) / abs(best["naive_topk"]["loss"]),
    }
    print(json.dumps(out, indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
