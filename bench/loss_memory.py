#!/usr/bin/env python
"""Peak memory (and time) of the weighted loss: chunked LM head vs full ``[B, T, V]`` logits.

    python bench/loss_memory.py                       # vocab 49,152 (SmolLM2), hidden 576, 4 × 512 tokens
    python bench/loss_memory.py --batch 8 --chunk 256

Each side runs in its own fresh process: the LM head's input ``hidden`` ``[B, T, H]`` (requires
grad) and the head weight ``[V, H]`` are allocated first, then one forward + backward of the
per-token NLL (every target weighted, as the engine reduces it). The figure is the growth of the
process's peak RSS over that forward + backward (``ru_maxrss`` after − before: what the loss
itself adds on top of its inputs), fp32 on CPU; on CUDA ``torch.cuda.max_memory_allocated``.
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


def child(args: argparse.Namespace) -> dict:
    import torch
    import torch.nn.functional as F

    from kpod.losses import per_token_nll
    from kpod.losses.chunked import linear_token_nll

    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(args.batch, args.seq, args.hidden, generator=g).to(dev).requires_grad_()
    weight = torch.randn(args.vocab, args.hidden, generator=g).mul_(0.02).to(dev).requires_grad_()  # no temporary
    labels = torch.randint(0, args.vocab, (args.batch, args.seq), generator=g).to(dev)
    labels[:, : args.seq // 8] = -100  # a prompt
    w = torch.rand(args.batch, args.seq - 1, generator=g).to(dev)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    if args.side == "full":
        nll, _, _ = per_token_nll(F.linear(hidden, weight), labels, False)
    else:
        nll, _, _ = linear_token_nll(hidden, weight, None, labels, False, args.chunk)
    loss = (nll * w).sum() / w.sum()
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
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--chunk", type=int, default=256, help="target tokens per chunk (the auto default)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--side", choices=["full", "chunked"], help=argparse.SUPPRESS)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if args.side:
        print("RESULT " + json.dumps(child(args)))
        return
    base = [sys.executable, __file__] + [f"--{k}={getattr(args, k)}" for k in
                                          ("vocab", "hidden", "batch", "seq", "chunk", "threads", "device")]
    runs: dict[str, list[dict]] = {"full": [], "chunked": []}
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    for i in range(args.repeats):
        for side in (("full", "chunked") if i % 2 == 0 else ("chunked", "full")):
            p = subprocess.run([*base, f"--side={side}"], capture_output=True, text=True, check=True, env=env)
            runs[side].append(json.loads(next(x for x in p.stdout.splitlines() if x.startswith("RESULT "))[7:]))
            print(side, runs[side][-1], file=sys.stderr)
    full, ch = runs["full"][-1], runs["chunked"][-1]
    fm = min(r["peak_growth_mib"] for r in runs["full"])
    cm = max(r["peak_growth_mib"] for r in runs["chunked"])
    out = {
        "machine": platform.platform(), "device": args.device, "vocab": args.vocab, "hidden": args.hidden,
        "tokens": args.batch * args.seq, "chunk": args.chunk,
        "full_peak_growth_mib": fm, "chunked_peak_growth_mib": cm, "memory_ratio": round(fm / cm, 2),
        "full_seconds": min(r["seconds"] for r in runs["full"]), "chunked_seconds": min(r["seconds"] for r in runs["chunked"]),
        "loss_rel_diff": abs(full["loss"] - ch["loss"]) / abs(full["loss"]),
        "grad_w_norm_rel_diff": abs(full["grad_norm_w"] - ch["grad_norm_w"]) / full["grad_norm_w"],
        "runs": runs,
    }
    print(json.dumps(out, indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
