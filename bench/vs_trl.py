#!/usr/bin/env python
"""kpod's standard-CoT run against TRL's ``SFTTrainer`` on the same model, data and steps.

    pip install trl==1.16.0                 # benchmark-only dependency, not a kpod requirement
    python bench/vs_trl.py                  # std_cot offline default, 100 steps, CPU, 2 threads
    python bench/vs_trl.py --steps 300 --repeats 3 --device cuda --hidden 512 --layers 8

Each side runs in its own fresh process (so peak memory is its own), in alternating order over
``--repeats`` rounds. Both sides: the recipe's arith training data, the same tiny Llama built from
the recipe (same seed, same in-process tokenizer), the same text (kpod's template: prompt
``Q: … A: Let's think step by step.``, completion ``rationale Therefore, the answer is N`` + EOS),
loss on completion tokens only, batch 32, AdamW (recipe LR, betas, weight decay 0), constant LR,
no warm-up, clipping 1.0, fp32 on CPU / bf16 on GPU, no evaluation, no checkpoints.

Timed per side: from the loaded records to the end of training — tokenizer training and model
construction, tokenisation / dataset preparation, trainer construction and ``train()``. kpod:
``run_recipe`` with ``eval.splits: []``, its whole wall time less the data-loading phase (its
phases are reported too). Libraries (transformers' Llama, accelerate; trl) are imported before the
timed span on both sides. Goal: kpod wall ≤ 0.8× TRL.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _sets(args: argparse.Namespace) -> list[str]:
    # --trl-packing: one epoch over steps × 32 examples on both sides (TRL's packed steps hold a
    # different number of examples, so "the same steps" is no longer the same work)
    steps = [f"data.source.params.n_train={32 * args.steps}", "train.epochs=1"] if args.trl_packing else [
        f"train.max_steps={args.steps}"]
    sets = [
        "eval.splits=[]", *steps, "train.warmup_steps=0", "train.lr_schedule=constant",
        "train.grad_clip=1.0", "train.batch_size=32", "train.grad_accum=1", f"train.log_every={args.steps}",
        f"train.checkpoint_every={10 * args.steps}", f"train.threads={args.threads}",
        f"train.precision={'bf16' if args.device == 'cuda' else 'fp32'}",
    ]
    if args.hidden:
        sets += [f"student.tiny.hidden_size={args.hidden}", f"student.tiny.intermediate_size={4 * args.hidden}"]
    if args.layers:
        sets.append(f"student.tiny.num_layers={args.layers}")
    return sets


def side_kpod(args: argparse.Namespace) -> dict:
    import accelerate  # noqa: F401  (libraries are imported outside the timed span on both sides)
    import transformers.models.llama.modeling_llama  # noqa: F401

    from kpod.engine.run import run_recipe
    from kpod.recipe import load_recipe

    recipe = load_recipe(args.recipe, _sets(args))
    out = Path(tempfile.mkdtemp()) / "run"
    summary = run_recipe(recipe, out, quiet=True)
    ph = summary["wall_seconds"]["phases"]
    timed = summary["wall_seconds"]["total"] - ph["data"] - ph.get("eval", 0.0)  # everything else counts
    return {"side": "kpod", "wall_s": timed, "phases": ph, "steps": summary["train"]["steps"],
            "final_loss": summary["train"]["final"].get("loss")}


def side_trl(args: argparse.Namespace) -> dict:
    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from kpod.data.load import load_data, template_from
    from kpod.models.student import load_student
    from kpod.recipe import load_recipe

    recipe = load_recipe(args.recipe, _sets(args))
    torch.set_num_threads(args.threads)
    train = load_data(recipe)["train"]
    template = template_from(recipe)
    t0 = time.perf_counter()
    student = load_student(recipe.student, [template.serialize(r).text for r in train], seed=recipe.seed)
    t_student = time.perf_counter() - t0
    rows = []
    for r in train:
        s = template.serialize(r)
        rows.append({"prompt": s.text[: s.prefix_end], "completion": s.text[s.prefix_end :]})
    tok = student.tokenizer
    # TRL's own packing (best-fit decreasing into rows of max_length, padding-free): rows per step
    # chosen so a step holds about 32 examples, as kpod's does; one epoch
    rows_per_step = 32
    if args.trl_packing:
        lengths = [len(x) for x in tok([r["prompt"] + r["completion"] for r in rows])["input_ids"]]
        rows_per_step = max(1, round(32 * (sum(lengths) / len(lengths)) / recipe.data.max_length))
    cfg = SFTConfig(
        output_dir=tempfile.mkdtemp(), max_steps=-1 if args.trl_packing else args.steps, num_train_epochs=1,
        per_device_train_batch_size=rows_per_step,
        gradient_accumulation_steps=1, learning_rate=recipe.train.lr, lr_scheduler_type="constant",
        warmup_steps=0, weight_decay=0.0, adam_beta1=recipe.train.betas[0], adam_beta2=recipe.train.betas[1],
        max_grad_norm=1.0, logging_steps=args.steps, save_strategy="no", report_to="none", disable_tqdm=True,
        completion_only_loss=True, max_length=recipe.data.max_length, packing=args.trl_packing, seed=recipe.seed,
        bf16=args.device == "cuda", use_cpu=args.device == "cpu", dataloader_num_workers=0,
        eos_token=tok.eos_token, pad_token=tok.pad_token,
    )
    trainer = SFTTrainer(model=student.model, args=cfg, train_dataset=Dataset.from_list(rows), processing_class=tok)
    result = trainer.train()
    wall = time.perf_counter() - t0
    return {"side": "trl", "wall_s": wall, "student_s": t_student, "steps": result.global_step,
            "rows_per_step": rows_per_step, "final_loss": result.training_loss}


def child(args: argparse.Namespace) -> None:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    res = side_kpod(args) if args.side == "kpod" else side_trl(args)
    ru2 = resource.getrusage(resource.RUSAGE_SELF)
    res["process_cpu_s"] = round(ru2.ru_utime + ru2.ru_stime - ru.ru_utime - ru.ru_stime, 2)  # imports excluded
    res["peak_host_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    import torch

    if torch.cuda.is_available():
        res["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    print("RESULT " + json.dumps(res))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--recipe", default=str(ROOT / "recipes/std_cot.yaml"))
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--hidden", type=int, default=None)
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--trl-packing", action="store_true",
                    help="TRL with its own packing; both sides train one epoch over steps × 32 examples")
    ap.add_argument("--side", choices=["kpod", "trl"], help=argparse.SUPPRESS)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if args.side:
        return child(args)
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS=str(args.threads), TOKENIZERS_PARALLELISM="false")
    results: dict[str, list[dict]] = {"kpod": [], "trl": []}
    base = [sys.executable, __file__, "--recipe", args.recipe, "--steps", str(args.steps), "--threads",
            str(args.threads), "--device", args.device]
    base += (["--hidden", str(args.hidden)] if args.hidden else []) + (["--layers", str(args.layers)] if args.layers else [])
    base += ["--trl-packing"] if args.trl_packing else []
    for i in range(args.repeats):
        for side in (("kpod", "trl") if i % 2 == 0 else ("trl", "kpod")):
            proc = subprocess.run([*base, "--side", side], env=env, capture_output=True, text=True, check=True)
            line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
            results[side].append(json.loads(line[7:]))
            print(side, results[side][-1], file=sys.stderr)
    k = statistics.median(r["wall_s"] for r in results["kpod"])
    t = statistics.median(r["wall_s"] for r in results["trl"])
    out = {
        "machine": platform.platform(), "device": args.device, "threads": args.threads, "steps": args.steps,
        "kpod_wall_s": round(k, 2), "trl_wall_s": round(t, 2), "ratio": round(k / t, 3),
        "kpod_cpu_s": statistics.median(r["process_cpu_s"] for r in results["kpod"]),
        "trl_cpu_s": statistics.median(r["process_cpu_s"] for r in results["trl"]),
        "trl_packing": args.trl_packing, "runs": results,
    }
    print(json.dumps(out, indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
