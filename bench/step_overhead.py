#!/usr/bin/env python
"""kpod's training step against a minimal hand-written PyTorch weighted-CE loop.

    python bench/step_overhead.py                       # offline default student, CPU
    python bench/step_overhead.py --device cuda --precision bf16 --hidden 512 --layers 8

Both sides get the same initial weights and the *same pre-collated batches* (kpod's collator, run
once before timing), and do the same work per step: forward, per-token weighted CE
Σ(w·ℓ)/Σw (the kpod loss: rationale tokens weighted, answer tokens weight 1), backward, gradient
clipping, AdamW, zero_grad, and one host read of the loss. kpod's side is ``Trainer._window``
(the engine step: exact window reduction, statistics, NaN guard, LR schedule). The two are run
in alternating blocks (ABAB…) after a warm-up, and the median step time of each is compared;
the losses of the two sides are checked to agree step by step (same maths, same data).

A second figure times a whole ``Trainer.train()`` epoch (collation per step, logging, progress
callbacks, the end-of-epoch checkpoint) against the hand loop plus the same per-step collation.
Goal: median step ratio kpod / hand ≤ 1.05.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kpod import registry  # noqa: E402
from kpod.data.collate import StageCollator  # noqa: E402
from kpod.data.load import load_data, template_from  # noqa: E402
from kpod.engine.distributed import make_accelerator  # noqa: E402
from kpod.engine.train import Trainer  # noqa: E402
from kpod.models.student import load_student  # noqa: E402
from kpod.recipe import build_component, load_recipe  # noqa: E402
from kpod.runs import MetricsWriter  # noqa: E402
from kpod.schedulers.base import CurriculumPlan  # noqa: E402


def hand_step(model, opt, batch, clip, dev, autocast):
    labels = batch["labels"].to(dev)
    with autocast():
        logits = model(input_ids=batch["input_ids"].to(dev), attention_mask=batch["attention_mask"].to(dev)).logits
    lg, lb = logits[:, :-1].float(), labels[:, 1:]
    mask = lb != -100
    nll = F.cross_entropy(lg.reshape(-1, lg.size(-1)), lb.clamp_min(0).reshape(-1), reduction="none").view(lb.shape)
    w = torch.where(batch["is_answer"][:, 1:].to(dev), 1.0, batch["weights"][:, 1:].to(dev).float()) * mask
    loss = (nll * w).sum() / w.sum()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(loss.detach())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--recipe", default="recipes/kpod_weighting.yaml")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--steps", type=int, default=40, help="timed steps per side")
    ap.add_argument("--block", type=int, default=5, help="steps per alternating block")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--hidden", type=int, default=None)
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sets = ["weighting.name=uniform", "scheduler.name=none", "loss.name=kpod"]
    if args.batch_size:
        sets.append(f"train.batch_size={args.batch_size}")
    if args.hidden:
        sets += [f"student.tiny.hidden_size={args.hidden}", f"student.tiny.intermediate_size={4 * args.hidden}"]
    if args.layers:
        sets.append(f"student.tiny.num_layers={args.layers}")
    recipe = load_recipe(args.recipe, sets)
    dev = torch.device(args.device)
    train = load_data(recipe)["train"]
    template = template_from(recipe)
    student = load_student(recipe.student, [template.serialize(r).text for r in train], seed=0)
    weights = {r.sample_id: [(0, len(r.rationale) // 2, 0.3), (len(r.rationale) // 2, len(r.rationale), 0.9)] for r in train}
    collator = StageCollator(train, template, student.tokenizer, False, weights)
    hand_model = copy.deepcopy(student.model).to(dev)
    student.model.to(dev)
    acc = make_accelerator(args.precision)
    tmp = Path(tempfile.mkdtemp())
    cfg = recipe.train.model_copy(update={"warmup_steps": 0, "lr_schedule": "constant", "grad_clip": 1.0, "grad_accum": 1})
    trainer = Trainer(
        model=student.model, is_encoder_decoder=False, collator=collator,
        loss_fn=build_component(registry.LOSSES, recipe.loss), plan=CurriculumPlan(),
        train_ids=[r.sample_id for r in train], cfg=cfg, seed=0, run_dir=tmp, accelerator=acc,
        metrics=MetricsWriter(tmp / "m.jsonl", enabled=False),
    )
    opt = torch.optim.AdamW(hand_model.parameters(), lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    mbs = [w for _, _, w in trainer.windows()][: args.warmup + args.steps]
    batches = [collator(w[0]) for w in mbs]
    def autocast():
        return torch.autocast(dev.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")

    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    n_params = sum(p.numel() for p in hand_model.parameters())
    tokens = [int((b["labels"] != -100).sum()) for b in batches]

    kpod_t, hand_t, kpod_loss, hand_loss = [], [], [], []
    for i in range(args.warmup):  # same order on both sides keeps the models identical
        kpod_loss.append(trainer._window([copy.copy(batches[i])])["loss"])
        hand_loss.append(hand_step(hand_model, opt, batches[i], cfg.grad_clip, dev, autocast))
    i = args.warmup
    while i < len(batches):
        block = range(i, min(i + args.block, len(batches)))
        for j in block:
            sync()
            t = time.perf_counter()
            kpod_loss.append(trainer._window([copy.copy(batches[j])])["loss"])
            sync()
            kpod_t.append(time.perf_counter() - t)
        for j in block:
            sync()
            t = time.perf_counter()
            hand_loss.append(hand_step(hand_model, opt, batches[j], cfg.grad_clip, dev, autocast))
            sync()
            hand_t.append(time.perf_counter() - t)
        i += args.block
    drift = max(abs(a - b) / max(abs(b), 1e-9) for a, b in zip(kpod_loss, hand_loss))

    # whole epochs: Trainer.train() (collation each step, logging, checkpoint) vs hand + collation
    trainer.cfg = cfg.model_copy(update={"epochs": 1, "max_steps": args.steps, "log_every": 10})
    trainer.total_steps = args.steps
    trainer.state.epoch, trainer.state.micro, trainer.state.global_step = 1, 0, 0
    sync()
    t = time.perf_counter()
    trainer.train()
    sync()
    kpod_epoch = time.perf_counter() - t
    sync()
    t = time.perf_counter()
    for w in mbs[: args.steps]:
        hand_step(hand_model, opt, collator(w[0]), cfg.grad_clip, dev, autocast)
    sync()
    hand_epoch = time.perf_counter() - t

    med_k, med_h = statistics.median(kpod_t), statistics.median(hand_t)
    out = {
        "device": torch.cuda.get_device_name(0) if dev.type == "cuda" else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(), "torch": torch.__version__, "precision": args.precision,
        "params": n_params, "batch_size": cfg.batch_size, "mean_target_tokens": sum(tokens) / len(tokens),
        "timed_steps": len(kpod_t),
        "kpod_step_ms": round(1e3 * med_k, 3), "hand_step_ms": round(1e3 * med_h, 3),
        "ratio_median": round(med_k / med_h, 4),
        "ratio_mean": round(statistics.mean(kpod_t) / statistics.mean(hand_t), 4),
        "max_relative_loss_difference": drift,
        "epoch_kpod_s": round(kpod_epoch, 3), "epoch_hand_s": round(hand_epoch, 3),
        "epoch_ratio": round(kpod_epoch / hand_epoch, 4),
        "peak_host_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "peak_gpu_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1) if dev.type == "cuda" else None,
    }
    print(json.dumps(out, indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
