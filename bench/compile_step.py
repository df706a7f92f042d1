#!/usr/bin/env python
"""``train.compile``: kpod's engine step with and without ``torch.compile`` of the student.

    python bench/compile_step.py                 # offline default student, CPU, one thread
    python bench/compile_step.py --device cuda --steps 30

Two trainers on copies of the same student and the same micro-batches (packing and chunked loss
as configured by default), alternating blocks after a warm-up; the compile time (the first steps)
is reported apart. Time is CPU time on CPU (one thread; the machine is shared), wall time on CUDA.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kpod import registry  # noqa: E402
from kpod.data.collate import StageCollator  # noqa: E402
from kpod.data.load import load_data, template_from  # noqa: E402
from kpod.engine.distributed import make_accelerator  # noqa: E402
from kpod.engine.train import Trainer  # noqa: E402
from kpod.models.student import load_student  # noqa: E402
from kpod.recipe import build_component, load_recipe  # noqa: E402
from kpod.runs import MetricsWriter  # noqa: E402
from kpod.schedulers.base import CurriculumPlan  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--recipe", default=str(ROOT / "recipes/std_cot.yaml"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    recipe = load_recipe(args.recipe, ["data.source.params.n_train=2000"])
    train = load_data(recipe)["train"]
    template = template_from(recipe)
    student = load_student(recipe.student, [template.serialize(r).text for r in train], seed=0)
    collator = StageCollator(train, template, student.tokenizer, student.is_encoder_decoder, None)
    clock = time.process_time if dev.type == "cpu" else time.perf_counter
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    trainers = {}
    for name, comp in (("eager", False), ("compiled", True)):
        cfg = recipe.train.model_copy(update={"compile": comp, "warmup_steps": 0, "lr_schedule": "constant"})
        tmp = Path(tempfile.mkdtemp())
        trainers[name] = Trainer(
            model=copy.deepcopy(student.model).to(dev), is_encoder_decoder=student.is_encoder_decoder,
            collator=collator, loss_fn=build_component(registry.LOSSES, recipe.loss), plan=CurriculumPlan(),
            train_ids=[r.sample_id for r in train], cfg=cfg, seed=0, run_dir=tmp,
            accelerator=make_accelerator("fp32"), metrics=MetricsWriter(tmp / "m.jsonl", enabled=False))
    windows = [w for _, _, w in trainers["eager"].windows()][: args.warmup + args.steps]
    times: dict[str, list[float]] = {k: [] for k in trainers}
    first: dict[str, float] = {}
    losses: dict[str, list[float]] = {k: [] for k in trainers}
    for i, w in enumerate(windows):
        for name, t in trainers.items():
            b = t.collate(w[0], None)
            sync()
            c = clock()
            losses[name].append(t._window([b])["loss"])
            sync()
            dt = clock() - c
            if i < args.warmup:
                first[name] = first.get(name, 0.0) + dt
            else:
                times[name].append(dt)
    e, c = statistics.median(times["eager"]), statistics.median(times["compiled"])
    out = {"device": args.device, "threads": torch.get_num_threads(), "torch": torch.__version__,
           "eager_step_s": round(e, 4), "compiled_step_s": round(c, 4), "speedup": round(e / c, 3),
           "warmup_s": {k: round(v, 2) for k, v in first.items()},
           "max_rel_loss_diff": max(abs(a - b) / abs(a) for a, b in zip(losses["eager"], losses["compiled"]))}
    print(json.dumps(out, indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
