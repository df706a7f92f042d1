#!/usr/bin/env python
"""Training tokens/s: padded micro-batches vs padding-free packing (and the chunked loss), side by side.

    python bench/packing.py                                        # offline default (std_cot, arith)
    python bench/packing.py --recipe recipes/paper/svamp_cpu_tiny.yaml   # SVAMP-length rationales
    python bench/packing.py --configs padded,packed1,packed2 --steps 12
    python bench/packing.py --difficulty --recipe recipes/paper/svamp_cpu_tiny.yaml   # Eq. 8's pass

Every configuration trains its own copy of the same initial student with kpod's engine step
(``Trainer._window``: forward, per-token weighted loss, exact Σw reduction, backward, clipping,
AdamW) on the *same* micro-batches (sample_ids in the engine's epoch order), in alternating
blocks (ABC ABC …) after a warm-up, one process. Tokens/s counts real tokens (prompt + target,
no padding), the same for every configuration, so the ratio is a time ratio. The losses of the
configurations are checked to agree step by step (they are the same maths). Time is the process's
CPU time (``time.process_time``) with one thread by default: on a shared machine wall time swings
several-fold with the neighbours' load, CPU time much less (wall time is reported too).

Configurations: ``padded`` (padded batches, full logits: the engine before packing), ``padded_chunk``
(padded, chunked loss), ``packed1`` / ``packed2`` (packed rows of 1× / 2× the longest sequence,
chunked loss; ``packed1`` is the default for sdpa / eager attention).

``--difficulty``: the step-difficulty pass (Eq. 8, ``kpod.difficulty.compute_difficulties``, no
cache) over ``--records`` training examples, padded (length-sorted batches of
``difficulty.batch_size``) vs packed (rows of 1× / 2× the longest sequence), each with full logits
or (``padded_chunk``, ``packed1_chunk``) the chunked LM head at the step tokens only, in alternating
rounds; tokens/s counts every real token, and the difficulties are checked against the padded
pass's (max relative difference).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kpod import registry  # noqa: E402
from kpod.data.collate import StageCollator, token_lengths  # noqa: E402
from kpod.data.load import load_data, template_from  # noqa: E402
from kpod.difficulty import compute_difficulties  # noqa: E402
from kpod.engine.distributed import make_accelerator  # noqa: E402
from kpod.engine.train import Trainer  # noqa: E402
from kpod.models.student import load_student  # noqa: E402
from kpod.recipe import build_component, load_recipe  # noqa: E402
from kpod.runs import MetricsWriter  # noqa: E402
from kpod.schedulers.base import CurriculumPlan  # noqa: E402

CONFIGS = {  # name: (packing, loss_chunk_tokens, rows_of)
    "padded": (False, 0, None),
    "padded_chunk": (False, 256, None),
    "packed1": (True, 256, 1),
    "packed2": (True, 256, 2),
}


def causal_setup(args: argparse.Namespace) -> tuple[Any, list[Any], Any, Any, int, dict[str, int]]:
    """The recipe's training records, template and causal student, the length limit and each
    record's token length (both benchmarks start here)."""
    recipe = load_recipe(args.recipe, ["data.on_too_long=skip"])
    train = load_data(recipe)["train"]
    template = template_from(recipe)
    student = load_student(recipe.student, [template.serialize(r).text for r in train], seed=0)
    if student.is_encoder_decoder:
        raise SystemExit("packing is for causal students")
    limit = min(recipe.data.max_length, student.model.config.max_position_embeddings)
    return recipe, train, template, student, limit, token_lengths(train, template, student.tokenizer, False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--recipe", default=str(ROOT / "recipes/std_cot.yaml"))
    ap.add_argument("--configs", default="padded,padded_chunk,packed1,packed2")
    ap.add_argument("--steps", type=int, default=12, help="timed steps per configuration")
    ap.add_argument("--block", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--difficulty", action="store_true", help="time the step-difficulty pass instead of training")
    ap.add_argument("--records", type=int, default=400, help="--difficulty: training examples in the pass")
    ap.add_argument("--repeats", type=int, default=3, help="--difficulty: alternating rounds")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.difficulty:
        return difficulty_pass(args)
    names = args.configs.split(",")
    recipe, train, template, student, limit, lengths = causal_setup(args)
    train = [r for r in train if lengths[r.sample_id] <= limit]
    weights = {r.sample_id: [(0, len(r.rationale) // 2, 0.3), (len(r.rationale) // 2, len(r.rationale), 0.9)] for r in train}
    collator = StageCollator(train, template, student.tokenizer, False, weights, limit)
    loss_fn = build_component(registry.LOSSES, recipe.loss)
    base = copy.deepcopy(student.model)
    trainers = {}
    for name in names:
        packing, chunk, rows_of = CONFIGS[name]
        cfg = recipe.train.model_copy(update={"warmup_steps": 0, "lr_schedule": "constant", "grad_accum": 1,
                                              "packing": packing, "loss_chunk_tokens": chunk})
        tmp = Path(tempfile.mkdtemp())
        t = Trainer(model=copy.deepcopy(base), is_encoder_decoder=False, collator=collator, loss_fn=loss_fn,
                    plan=CurriculumPlan(), train_ids=[r.sample_id for r in train], cfg=cfg, seed=0, run_dir=tmp,
                    accelerator=make_accelerator("fp32"), metrics=MetricsWriter(tmp / "m.jsonl", enabled=False))
        if rows_of is not None:
            t.pack_rows_of = rows_of
        trainers[name] = t
    first = trainers[names[0]]
    windows = [w for _, _, w in first.windows()][: args.warmup + args.steps]
    tokens = [sum(len(collator.example(s, 0)["input_ids"]) for s in w[0]) for w in windows]
    shapes = {n: [] for n in names}
    times = {n: [] for n in names}
    walls = {n: [] for n in names}
    losses = {n: [] for n in names}

    def step(n: str, i: int, timed: bool) -> None:
        t = trainers[n]
        start, wall = time.process_time(), time.perf_counter()
        b = t.collate(windows[i][0], None)  # collation counted: packing is done per step
        stats = t._window([b])
        if timed:
            times[n].append(time.process_time() - start)
            walls[n].append(time.perf_counter() - wall)
        shapes[n].append(tuple(b["input_ids"].shape))
        losses[n].append(stats["loss"])

    for i in range(args.warmup):
        for n in names:
            step(n, i, False)
    i = args.warmup
    while i < len(windows):
        block = range(i, min(i + args.block, len(windows)))
        for n in names:
            for j in block:
                step(n, j, True)
        i += args.block
    tok = sum(tokens[args.warmup :])
    ref = names[0]
    out = {
        "recipe": recipe.name, "machine": platform.platform(), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "params": sum(p.numel() for p in base.parameters()),
        "vocab": len(student.tokenizer), "batch_size": recipe.train.batch_size, "timed_steps": args.steps,
        "mean_tokens_per_batch": tok / args.steps,
        "configs": {},
    }
    for n in names:
        total = sum(times[n])
        cells = [r * c for r, c in shapes[n][args.warmup :]]
        out["configs"][n] = {
            "tokens_per_cpu_s": round(tok / total, 1),
            "median_step_cpu_s": round(statistics.median(times[n]), 4),
            "tokens_per_wall_s": round(tok / sum(walls[n]), 1),
            "mean_batch_shape": [round(statistics.mean(s[k] for s in shapes[n]), 1) for k in (0, 1)],
            "real_token_fraction": round(tok / sum(cells), 3),
            "speedup_vs_" + ref: round(sum(times[ref]) / total, 3),
            "max_rel_loss_diff_vs_" + ref: max(abs(a - b) / abs(b) for a, b in zip(losses[n], losses[ref])),
        }
    print(json.dumps(out, indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


# name: (packing, rows_of, chunk_tokens); *_chunk: the LM head at the step tokens only, 256 at a time
DIFFICULTY_CONFIGS = {"padded": (False, 1, 0), "packed1": (True, 1, 0), "packed2": (True, 2, 0),
                      "padded_chunk": (False, 1, 256), "packed1_chunk": (True, 1, 256)}


def difficulty_pass(args: argparse.Namespace) -> None:
    """Eq. 8's teacher-forced pass, padded vs packed, on the same records (see the module doc)."""
    import random

    names = [n for n in args.configs.split(",") if n in DIFFICULTY_CONFIGS] or ["padded", "packed1"]
    recipe, train, template, student, limit, lengths = causal_setup(args)
    train = [r for r in train if r.steps and lengths[r.sample_id] <= limit]
    random.Random(0).shuffle(train)
    train = train[: args.records]
    weights = {r.sample_id: [(0, len(r.rationale) // 2, 0.3), (len(r.rationale) // 2, len(r.rationale), 0.9)] for r in train}
    tok = sum(lengths[r.sample_id] for r in train)
    cells = {n: 0 for n in names}
    times = {n: [] for n in names}
    walls = {n: [] for n in names}
    got = {}
    counting = [None]
    hook = student.model.register_forward_pre_hook(
        lambda m, a, kw: cells.__setitem__(counting[0], cells[counting[0]] + kw["input_ids"].numel()), with_kwargs=True
    )
    for _ in range(args.repeats):
        for n in names:
            packing, rows_of, chunk = DIFFICULTY_CONFIGS[n]
            counting[0], cells[n] = n, 0
            start, wall = time.process_time(), time.perf_counter()
            got[n] = compute_difficulties(student.model, student.tokenizer, False, train, template, weights,
                                          batch_size=recipe.difficulty.batch_size, packing=packing, pack_rows_of=rows_of,
                                          chunk_tokens=chunk)
            times[n].append(time.process_time() - start)
            walls[n].append(time.perf_counter() - wall)
    hook.remove()
    ref = names[0]
    out = {
        "recipe": recipe.name, "machine": platform.platform(), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "params": sum(p.numel() for p in student.model.parameters()),
        "vocab": len(student.tokenizer), "records": len(train), "tokens": tok,
        "batch_size": recipe.difficulty.batch_size, "repeats": args.repeats, "configs": {},
    }
    for n in names:
        rel = max(abs(a - b) / abs(b) for s in got[ref] for a, b in zip(got[n][s], got[ref][s]))
        out["configs"][n] = {
            "tokens_per_cpu_s": round(tok / statistics.median(times[n]), 1),
            "cpu_s_per_round": [round(t, 2) for t in times[n]],
            "tokens_per_wall_s": round(tok / statistics.median(walls[n]), 1),
            "real_token_fraction": round(tok / cells[n], 3),
            "speedup_vs_" + ref: round(statistics.median(times[ref]) / statistics.median(times[n]), 3),
            "max_rel_difficulty_diff_vs_" + ref: rel,
        }
    print(json.dumps(out, indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
