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

from kpod.engine.run import make_accelerator  # noqa: E402
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


def batch(bs: int, seq: int, vocab: int, dev) -> dict:
    ids = torch.randint(3, vocab, (bs, seq), device=dev)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone(),
            "weights": torch.ones(bs, seq, device=dev), "is_answer": torch.zeros(bs, seq, dtype=torch.bool, device=dev),
            "sample_ids": [f"s{i}" for i in range(bs)]}


def time_kpod(args, dev) -> dict:
    model, cfg = llama(args.tiny)
    model.to(dev)
    tc = TrainConfig(batch_size=args.batch_size, lr=1e-4, warmup_steps=0, lr_schedule="constant",
                     precision="bf16", grad_clip=1.0, epochs=1)
    tmp = Path(tempfile.mkdtemp())
    trainer = Trainer(model=model, is_encoder_decoder=False, collator=None, loss_fn=KpodLoss(), plan=CurriculumPlan(),
                      train_ids=[f"s{i}" for i in range(args.batch_size * (args.steps + args.warmup))], cfg=tc, seed=0,
                      run_dir=tmp, accelerator=make_accelerator("bf16"), metrics=MetricsWriter(tmp / "m", enabled=False))
    times = []
    for i in range(args.warmup + args.steps):
        b = batch(args.batch_size, args.seq, cfg.vocab_size, dev)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        trainer._window([b])
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - t)
    step = statistics.median(times)
    tok = args.batch_size * args.seq
    fpt = flops_per_token(model, cfg, args.seq)
    out = {"params": sum(p.numel() for p in model.parameters()), "step_s": step, "tokens_per_s": tok / step,
           "model_tflops_per_s": fpt * tok / step / 1e12}
    out["mfu"] = out["model_tflops_per_s"] / args.peak_tflops
    if dev.type == "cuda":
        out["peak_gpu_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def time_trl(args, dev) -> dict:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    model, cfg = llama(args.tiny)
    g = torch.Generator().manual_seed(0)
    n = args.batch_size * (args.steps + args.warmup)
    rows = [{"input_ids": torch.randint(3, cfg.vocab_size, (args.seq,), generator=g).tolist()} for _ in range(n)]
    stamps: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, *a, **k):
            if dev.type == "cuda":
                torch.cuda.synchronize()
            stamps.append(time.perf_counter())

    conf = SFTConfig(output_dir=tempfile.mkdtemp(), max_steps=args.steps + args.warmup,
                     per_device_train_batch_size=args.batch_size, learning_rate=1e-4, lr_scheduler_type="constant",
                     bf16=True, max_grad_norm=1.0, logging_steps=10**6, save_strategy="no", report_to="none",
                     disable_tqdm=True, max_length=args.seq, packing=False, use_cpu=dev.type == "cpu")
    from kpod.data.tokenize import (
        train_tokenizer,  # only its pad/eos ids are used: rows are token ids
    )

    tok = train_tokenizer(["0 1 2 3 4 5 6 7 8 9 a b c"], 64)
    trainer = SFTTrainer(model=model, args=conf, train_dataset=Dataset.from_list(rows), processing_class=tok,
                         callbacks=[Clock()])
    trainer.train()
    steps = [b - a for a, b in zip(stamps[args.warmup - 1 :], stamps[args.warmup :])]
    step = statistics.median(steps)
    tok = args.batch_size * args.seq
    return {"step_s": step, "tokens_per_s": tok / step,
            "mfu": flops_per_token(model, cfg, args.seq) * tok / step / 1e12 / args.peak_tflops}


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
