#!/usr/bin/env python
"""Evaluation on a GPU: kpod's greedy loop against the vLLM backend on the same questions.

    python bench/vllm_eval.py RUN/model RUN/recipe.resolved.yaml --split test --limit 200

Needs a CUDA GPU and vLLM (``pip install -e '.[vllm]'``); bench/gpu_session.sh runs it when
``import vllm`` works. Sides, each timed in wall-clock seconds (CUDA synchronized):

- ``kpod_eos``: kpod's loop on the model loaded by transformers, stopping at EOS only (what vLLM does);
- ``kpod``: the default, which also stops a sequence once it has written a complete answer;
- ``vllm``: one vLLM engine over the model directory (``eval.vllm`` options of the recipe, dtype
  overridable); its start-up (load + CUDA graphs) is reported apart from generation.

Agreement is reported against ``kpod_eos``: same output text, same parsed answer.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kpod import registry  # noqa: E402
from kpod.data.load import load_data, template_from  # noqa: E402
from kpod.engine.evaluate import vllm_generator  # noqa: E402
from kpod.eval.generate import evaluate_split  # noqa: E402
from kpod.models.student import load_saved  # noqa: E402
from kpod.recipe import build_component, load_recipe  # noqa: E402


def timed(fn):
    torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return out, round(time.perf_counter() - t, 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("model_dir", type=Path)
    ap.add_argument("recipe", type=Path)
    ap.add_argument("--split", default="test")
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--dtype", default=None, help="eval.vllm.dtype for the vLLM side (default: the recipe's)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    overrides = ["eval.backend=vllm"] + ([f"eval.vllm.dtype={args.dtype}"] if args.dtype else [])
    recipe = load_recipe(args.recipe, overrides)
    recs = load_data(recipe, training=False, require_train=False)[args.split][: args.limit]
    template = template_from(recipe)
    extractor = build_component(registry.ANSWER_EXTRACTORS, recipe.eval.extractor)
    dev = torch.device("cuda")
    student = load_saved(args.model_dir)
    student.model.to(dev)
    kw = dict(batch_size=recipe.eval.batch_size, max_new_tokens=recipe.eval.max_new_tokens, device=dev, split=args.split)
    preds, secs = {}, {}
    preds["kpod_eos"], secs["kpod_eos"] = timed(lambda: evaluate_split(
        student.model, student.tokenizer, recs, template, extractor, False, stop_at_answer=False, **kw)[1])
    preds["kpod"], secs["kpod"] = timed(lambda: evaluate_split(
        student.model, student.tokenizer, recs, template, extractor, False, **kw)[1])
    student.model.to("cpu")
    torch.cuda.empty_cache()
    gen, secs["vllm_start"] = timed(lambda: vllm_generator(recipe, str(args.model_dir), student.tokenizer))
    preds["vllm"], secs["vllm"] = timed(lambda: evaluate_split(
        None, student.tokenizer, recs, template, extractor, False, generator=gen, **kw)[1])
    gen.close()
    ref = preds["kpod_eos"]
    out = {"gpu": torch.cuda.get_device_name(), "questions": len(recs), "split": args.split,
           "max_new_tokens": recipe.eval.max_new_tokens, "vllm_dtype": recipe.eval.vllm.dtype,
           "seconds": secs, "sides": {}}
    for name, p in preds.items():
        assert [x["sample_id"] for x in p] == [r.sample_id for r in recs]
        out["sides"][name] = {
            "same_output_as_kpod_eos": sum(a["output"] == b["output"] for a, b in zip(p, ref)),
            "same_parsed_as_kpod_eos": sum(a["parsed"] == b["parsed"] for a, b in zip(p, ref)),
            "correct": sum(x["correct"] for x in p),
        }
    print(json.dumps(out, indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
