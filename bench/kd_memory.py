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
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from memory_sides import PeakMeter, add_head_args, run_sides, side_result  # noqa: E402

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
    meter = PeakMeter(dev)
    meter.start()
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
    return side_result(args.side, loss, hidden, weight, meter.stop())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    add_head_args(ap, repeats=1)
    ap.add_argument("--teacher-hidden", type=int, default=960)
    ap.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side:
        print("RESULT " + json.dumps(child(args)))
        return
    passthrough = [f"--{k.replace('_', '-')}={getattr(args, k)}" for k in
                   ("vocab", "hidden", "teacher_hidden", "batch", "seq", "chunk", "threads", "device")]
    runs = run_sides(__file__, passthrough, SIDES, args.repeats, args.threads)
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
