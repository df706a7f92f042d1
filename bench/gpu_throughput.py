#!/usr/bin/env python
"""Training throughput and model FLOPs utilisation (MFU) of kpod's engine step on a GPU.

    python bench/gpu_throughput.py                          # 1.1B Llama config, bf16, seq 512
    python bench/gpu_throughput.py --batch-size 8 --steps 30
    python bench/gpu_throughput.py --tiny --device cpu      # a smoke run of the script itself

A Llama-architecture student of about 1.1B parameters (hidden 2048, 22 layers, 32 heads, 4 KV
heads, MLP 5632, vocab 32000 — the TinyLlama-1.1B shape), randomly initialised; random token
batches of ``--seq`` tokens with every target weighted (uniform weights; the kpod loss). kpod's
step is ``Trainer._window`` (weighted CE with the exact window reduction, AdamW, clipping),
with ``train.precision: bf16`` (autocast; fp32 master weights, as the engine trains).

Sequences have random lengths, uniform in [``--seq``/4, ``--seq``] (``--fixed``: all ``--seq``), and
the step takes them as the engine does by default: packed padding-free (``train.packing``; rows of
``--seq`` tokens, one row per micro-batch with flash attention) with the chunked loss
(``train.loss_chunk_tokens``); ``--padded`` times the same sequences padded, full logits. Tokens/s
counts real tokens only.

MFU = achieved model FLOP/s ÷ peak dense bf16 FLOP/s of the GPU (``--peak-tflops``; default
989 for H100 SXM / H200). Model FLOPs per token = 6·N (N = non-embedding parameters + the LM
head) + 12·L·d·S (causal attention scores and values, forward + backward; PaLM appendix B).
``--trl`` also times TRL's ``SFTTrainer`` on the same model shape, batch and sequence (needs trl).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kpod.engine.distributed import make_accelerator  # noqa: E402
from kpod.engine.train import Trainer  # noqa: E402
from kpod.losses.token_ce import KpodLoss  # noqa: E402
from kpod.recipe import TrainConfig  # noqa: E402
from kpod.runs import MetricsWriter  # noqa: E402
from kpod.schedulers.base import CurriculumPlan  # noqa: E402


def llama(tiny: bool):
    from transformers import LlamaConfig, LlamaForCausalLM

    if tiny:
        cfg = LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024)
    else:
        cfg = LlamaConfig(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                          num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048,
                          tie_word_embeddings=False)
    return LlamaForCausalLM(cfg), cfg


def flops_per_token(model, cfg, seq: int) -> float:
    n = sum(p.numel() for p in model.parameters()) - model.get_input_embeddings().weight.numel()
    return 6 * n + 12 * cfg.num_hidden_layers * cfg.hidden_size * seq


def batch(bs: int, seq: int, vocab: int, g: torch.Generator, fixed: bool, packed: bool, rows_of: int | None) -> dict:
    """``bs`` random sequences as the engine's collator gives them: padded, or packed."""
    import numpy as np

    from kpod.data.packing import pack_examples

    lengths = [seq] * bs if fixed else torch.randint(seq // 4, seq + 1, (bs,), generator=g).tolist()
    exs = []
    for n in lengths:
        ids = torch.randint(3, vocab, (n,), generator=g).numpy()
        labels = ids.copy()
        labels[0] = -100
        exs.append({"input_ids": ids, "labels": labels, "weights": np.ones(n, dtype=np.float32),
                    "is_answer": np.zeros(n, dtype=bool)})
    sids = [f"s{i}" for i in range(bs)]
    if packed:
        return pack_examples(exs, sids, 0, sum(lengths) if rows_of is None else seq)
    out = {"input_ids": torch.zeros(bs, seq, dtype=torch.long), "attention_mask": torch.zeros(bs, seq, dtype=torch.long),
           "labels": torch.full((bs, seq), -100), "weights": torch.zeros(bs, seq),
           "is_answer": torch.zeros(bs, seq, dtype=torch.bool), "sample_ids": sids}
    for i, e in enumerate(exs):
        n = len(e["input_ids"])
        out["input_ids"][i, :n] = torch.from_numpy(e["input_ids"])
        out["attention_mask"][i, :n] = 1
        out["labels"][i, :n] = torch.from_numpy(e["labels"])
        out["weights"][i, :n] = 1.0
    return out


def time_kpod(args, dev) -> dict:
    model, cfg = llama(args.tiny)
    if args.attn:
        model.config._attn_implementation = args.attn
    model.to(dev)
    tc = TrainConfig(batch_size=args.batch_size, lr=1e-4, warmup_steps=0, lr_schedule="constant",
                     precision="bf16", grad_clip=1.0, epochs=1, packing=not args.padded,
                     loss_chunk_tokens=0 if args.padded else "auto", compile=args.compile)
    tmp = Path(tempfile.mkdtemp())
    trainer = Trainer(model=model, is_encoder_decoder=False, collator=None, loss_fn=KpodLoss(), plan=CurriculumPlan(),
                      train_ids=[f"s{i}" for i in range(args.batch_size * (args.steps + args.warmup))], cfg=tc, seed=0,
                      run_dir=tmp, accelerator=make_accelerator("bf16"), metrics=MetricsWriter(tmp / "m", enabled=False))
    times, toks = [], []
    g = torch.Generator().manual_seed(0)
    for i in range(args.warmup + args.steps):
        b = batch(args.batch_size, args.seq, cfg.vocab_size, g, args.fixed, trainer.packing, trainer.pack_rows_of)
        real = int((b["labels"] != -100).sum()) + args.batch_size  # every token but padding
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        trainer._window([b])
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - t)
            toks.append(real)
    step = statistics.median(times)
    tok = statistics.mean(toks)
    mean_len = tok / args.batch_size
    fpt = flops_per_token(model, cfg, mean_len)
    out = {"params": sum(p.numel() for p in model.parameters()), "step_s": step, "tokens_per_s": sum(toks) / sum(times),
           "mean_seq": mean_len, "packing": trainer.packing_reason, "loss_chunk": trainer.loss_chunk_reason,
           "attn": model.config._attn_implementation,
           "model_tflops_per_s": fpt * sum(toks) / sum(times) / 1e12}
    out["mfu"] = out["model_tflops_per_s"] / args.peak_tflops
    if dev.type == "cuda":
        out["peak_gpu_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def time_trl(args, dev) -> dict:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    model, cfg = llama(args.tiny)
    if args.attn:
        model.config._attn_implementation = args.attn
    g = torch.Generator().manual_seed(0)
    # the same length distribution as kpod's side; TRL packs them (its own packing, best-fit
    # decreasing into rows of --seq, padding-free) unless --fixed/--padded
    n = 4 * args.batch_size * (args.steps + args.warmup)
    lengths = [args.seq] * n if args.fixed else torch.randint(args.seq // 4, args.seq + 1, (n,), generator=g).tolist()
    rows = [{"input_ids": torch.randint(3, cfg.vocab_size, (k,), generator=g).tolist()} for k in lengths]
    pack = not (args.fixed or args.padded)
    stamps: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, *a, **k):
            if dev.type == "cuda":
                torch.cuda.synchronize()
            stamps.append(time.perf_counter())

    conf = SFTConfig(output_dir=tempfile.mkdtemp(), max_steps=args.steps + args.warmup,
                     per_device_train_batch_size=args.batch_size, learning_rate=1e-4, lr_scheduler_type="constant",
                     bf16=True, max_grad_norm=1.0, logging_steps=10**6, save_strategy="no", report_to="none",
                     disable_tqdm=True, max_length=args.seq, packing=pack, use_cpu=dev.type == "cpu")
    from kpod.data.tokenize import (
        train_tokenizer,  # only its pad/eos ids are used: rows are token ids
    )

    tok = train_tokenizer(["0 1 2 3 4 5 6 7 8 9 a b c"], 64)
    trainer = SFTTrainer(model=model, args=conf, train_dataset=Dataset.from_list(rows), processing_class=tok,
                         callbacks=[Clock()])
    trainer.train()
    steps = [b - a for a, b in zip(stamps[args.warmup - 1 :], stamps[args.warmup :])]
    step = statistics.median(steps)
    # real tokens per step: a packed row holds sum(lengths) / rows tokens on average
    per_row = sum(lengths) / len(trainer.train_dataset) if pack else statistics.mean(lengths)
    tok = args.batch_size * per_row
    mean_len = statistics.mean(lengths)
    return {"step_s": step, "tokens_per_s": tok / step, "packing": pack, "tokens_per_row": per_row,
            "mfu": flops_per_token(model, cfg, mean_len) * tok / step / 1e12 / args.peak_tflops}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the GPU")
    ap.add_argument("--tiny", action="store_true", help="a tiny config (script smoke test)")
    ap.add_argument("--trl", action="store_true", help="also time TRL's SFTTrainer")
    ap.add_argument("--fixed", action="store_true", help="every sequence --seq tokens (no length spread)")
    ap.add_argument("--padded", action="store_true", help="padded batches and full logits (the engine before packing)")
    ap.add_argument("--attn", default=None, help="attention implementation (sdpa, eager, flash_attention_2)")
    ap.add_argument("--compile", action="store_true", help="train.compile: torch.compile the student")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    dev = torch.device(args.device)
    out = {"device": torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu", "torch": torch.__version__,
           "batch_size": args.batch_size, "seq": args.seq, "kpod": time_kpod(args, dev)}
    if args.trl:
        if dev.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        out["trl"] = time_trl(args, dev)
    print(json.dumps(out, indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
