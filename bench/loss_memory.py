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
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from memory_sides import PeakMeter, add_head_args, run_sides, side_result  # noqa: E402


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
    meter = PeakMeter(dev)
    meter.start()
    if args.side == "full":
        nll, _, _ = per_token_nll(F.linear(hidden, weight), labels, False)
    else:
        nll, _, _ = linear_token_nll(hidden, weight, None, labels, False, args.chunk)
    loss = (nll * w).sum() / w.sum()
    loss.backward()
    return side_result(args.side, loss, hidden, weight, meter.stop())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    add_head_args(ap, repeats=2)
    ap.add_argument("--side", choices=["full", "chunked"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side:
        print("RESULT " + json.dumps(child(args)))
        return
    passthrough = [f"--{k}={getattr(args, k)}" for k in ("vocab", "hidden", "batch", "seq", "chunk", "threads", "device")]
    runs = run_sides(__file__, passthrough, ("full", "chunked"), args.repeats, args.threads)
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
