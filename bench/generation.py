#!/usr/bin/env python
"""Evaluation generation: kpod's greedy loop against plain ``model.generate`` on the same questions.

    python bench/generation.py                         # offline default student, 150 training steps
    python bench/generation.py --train-steps 400 --split test --limit 300

The offline default student (``recipes/std_cot.yaml``, tiny Llama) is trained for
``--train-steps`` steps (a partly trained model, as model selection sees it after early epochs),
then the same questions are answered greedily, ``eval.max_new_tokens`` (256) new tokens at most,
batch ``eval.batch_size`` (128):

- ``plain``: ``model.generate`` on left-padded batches in the split's order (what one writes by hand);
- ``kpod_eos``: kpod's loop (token-length-sorted batches, finished sequences leave the batch and
  the KV cache), stopping at EOS only — the same predictions as ``plain`` by construction;
- ``kpod``: the default, which also stops a sequence once it has written a complete answer.

``--train-steps 0`` skips training and answers with the recipe's student as loaded (a pre-trained
model such as ``recipes/smollm2/svamp/baselines/std_cot.yaml``'s, which has not learnt the answer format).

Time is CPU time (one thread by default; wall time is reported too), alternating order over
``--repeats`` rounds; prediction agreement with ``plain`` is reported per side.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kpod import registry  # noqa: E402
from kpod.data.load import load_data, template_from  # noqa: E402
from kpod.engine.run import run_recipe  # noqa: E402
from kpod.eval.generate import evaluate_split, generate  # noqa: E402
from kpod.models.student import load_saved, load_student  # noqa: E402
from kpod.recipe import build_component, load_recipe  # noqa: E402


def plain(student, recs, template, extractor, bs, max_new, dev):
    rows = []
    for s in range(0, len(recs), bs):
        batch = recs[s : s + bs]
        outs = generate(student.model, student.tokenizer, [template.inference_prefix(r.question) for r in batch],
                        False, max_new, dev, backend="hf")
        rows += [{"sample_id": r.sample_id, "output": o, "parsed": extractor.extract(o)} for r, o in zip(batch, outs)]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--recipe", default=str(ROOT / "recipes/std_cot.yaml"))
    ap.add_argument("--train-steps", type=int, default=150)
    ap.add_argument("--split", default="validation")
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--set", dest="sets", action="append", default=[], help="recipe override (repeatable)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    steps = [f"train.max_steps={args.train_steps}"] if args.train_steps > 0 else []
    recipe = load_recipe(args.recipe, [*steps, "eval.splits=[]", f"train.threads={args.threads}", *args.sets])
    if args.train_steps > 0:
        out_dir = Path(tempfile.mkdtemp()) / "run"
        run_recipe(recipe, out_dir, quiet=True)
        student = load_saved(out_dir / "model")
    else:
        student = load_student(recipe.student, seed=recipe.seed)
    student.model.eval()
    template = template_from(recipe)
    extractor = build_component(registry.ANSWER_EXTRACTORS, recipe.eval.extractor)
    recs = load_data(recipe)[args.split][: args.limit]
    dev = torch.device("cpu")
    bs, max_new = recipe.eval.batch_size, recipe.eval.max_new_tokens
    sides = {
        "plain": lambda: plain(student, recs, template, extractor, bs, max_new, dev),
        "kpod_eos": lambda: evaluate_split(student.model, student.tokenizer, recs, template, extractor, False,
                                           batch_size=bs, max_new_tokens=max_new, device=dev, split=args.split,
                                           stop_at_answer=False)[1],
        "kpod": lambda: evaluate_split(student.model, student.tokenizer, recs, template, extractor, False,
                                       batch_size=bs, max_new_tokens=max_new, device=dev, split=args.split)[1],
    }
    cpu: dict[str, list[float]] = {k: [] for k in sides}
    wall: dict[str, list[float]] = {k: [] for k in sides}
    preds: dict[str, list[dict]] = {}
    for i in range(args.repeats):
        for name in (list(sides) if i % 2 == 0 else list(reversed(sides))):
            c, w = time.process_time(), time.perf_counter()
            preds[name] = sides[name]()
            cpu[name].append(time.process_time() - c)
            wall[name].append(time.perf_counter() - w)
            print(name, round(cpu[name][-1], 2), file=sys.stderr)
    ref = preds["plain"]
    gold = {r.sample_id: r.answer for r in recs}
    out = {"machine": platform.platform(), "threads": args.threads, "torch": torch.__version__,
           "questions": len(recs), "split": args.split, "train_steps": args.train_steps,
           "max_new_tokens": max_new, "batch_size": bs, "sides": {}}
    mean_len = sum(len(student.tokenizer(p["output"])["input_ids"]) for p in ref) / len(ref)
    out["plain_mean_output_tokens"] = round(mean_len, 1)
    for name in sides:
        p = preds[name]
        assert [x["sample_id"] for x in p] == [r.sample_id for r in recs]
        out["sides"][name] = {
            "cpu_s": round(statistics.median(cpu[name]), 2), "wall_s": round(statistics.median(wall[name]), 2),
            "speedup_vs_plain_cpu": round(statistics.median(cpu["plain"]) / statistics.median(cpu[name]), 2),
            "same_output_as_plain": sum(a["output"] == b["output"] for a, b in zip(p, ref)),
            "same_parsed_as_plain": sum(a["parsed"] == b["parsed"] for a, b in zip(p, ref)),
            "correct": sum(bool(extractor.is_correct(a["parsed"], gold[a["sample_id"]])) for a in p),
        }
    print(json.dumps(out, indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
