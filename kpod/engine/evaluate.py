"""Evaluation inside a run: greedy generation + answer extraction on one split, shared by model
selection during training and the final evaluation of every ``eval.splits`` split.

``eval.backend: vllm`` applies to the final evaluation only, from the saved (selected) model in
``RUN_DIR/model``; model selection during training keeps kpod's loop on the model in memory, since
a vLLM engine would have to be started from a fresh save at every selection pass (seconds to
minutes each: loading, CUDA graph capture), more than it saves on a validation subset.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kpod import registry
from kpod.data.load import fit_eval_prompts
from kpod.data.records import Record
from kpod.engine.distributed import RunEnv, gather_predictions
from kpod.engine.prepare import Setup
from kpod.eval import vllm_backend
from kpod.eval.generate import evaluate_split
from kpod.recipe import RecipeError, build_component
from kpod.recipe_types import Recipe


class SplitEvaluator:
    """One split's accuracy and predictions for a model; under several processes each rank
    generates its share and every rank gets the gathered result."""

    def __init__(self, recipe: Recipe, setup: Setup, env: RunEnv) -> None:
        self.recipe, self.setup, self.env = recipe, setup, env
        self.extractor = build_component(registry.ANSWER_EXTRACTORS, recipe.eval.extractor)
        if recipe.eval.select_on is not None and recipe.eval.select_on not in setup.splits:
            raise RecipeError(
                f"eval.select_on: split {recipe.eval.select_on!r} is not in the data (have: "
                f"{', '.join(setup.splits)}); name another split, or set eval.select_on: null to report the final model"
            )

    def __call__(self, model: Any, split: str, *, limit: int | None = None, progress: bool = False,
                 generator: Any = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """``generator``: a :class:`~kpod.eval.vllm_backend.VllmGenerator` generating in place of
        ``model`` (the final evaluation under ``eval.backend: vllm``); without one, a vllm recipe
        evaluates with kpod's loop (model selection)."""
        setup, recipe, procs, reporter = self.setup, self.recipe, self.env.procs, self.env.reporter
        backend = "kpod" if recipe.eval.backend == "vllm" else recipe.eval.backend
        recs = setup.splits[split][:limit] if limit else setup.splits[split]
        recs = fit_eval_prompts(recipe, split, recs, setup.template, setup.tokenizer, setup.max_length,
                                setup.data_report, reporter.warn)
        mine = recs[procs.process_index :: procs.num_processes]
        with reporter.task(f"eval {split}", total=len(mine), enabled=progress) as advance:
            res, preds = evaluate_split(
                model, setup.tokenizer, mine, setup.template, self.extractor, setup.student.is_encoder_decoder,
                batch_size=recipe.eval.batch_size, max_new_tokens=recipe.eval.max_new_tokens,
                device=self.env.accelerator.device, split=split, on_batch=lambda n: advance(n, ""),
                stop_at_answer=recipe.eval.stop_at_answer, backend=backend, generator=generator,
            )
        if procs.num_processes > 1:
            res, preds = gather_predictions(preds, recs)
        return res, preds


@dataclass
class Evaluation:
    results: dict[str, dict[str, Any]]  # accuracy, count, correct per split
    predictions: list[dict[str, Any]]  # every evaluated sample, keyed by sample_id
    missing_splits: list[str]  # eval.splits the data does not have


def evaluate_splits(
    recipe: Recipe, evaluator: SplitEvaluator, model: Any, splits: dict[str, list[Record]], env: RunEnv,
    *, step: int, model_step: int | None, model_dir: Path | None = None,
) -> Evaluation:
    """Every ``eval.splits`` split the data has, on ``model`` (trained for ``step`` optimizer
    steps; ``model_step`` is the step of the weights it holds, the selected one). Under
    ``eval.backend: vllm`` a vLLM engine generates from ``model_dir``, where the run saved ``model``."""
    out = Evaluation({}, [], [s for s in recipe.eval.splits if s not in splits])
    wanted = [s for s in recipe.eval.splits if s in splits]
    generator = None
    if recipe.eval.backend == "vllm" and wanted:
        if model_dir is None:
            raise ValueError("eval.backend: vllm needs the directory the evaluated model was saved to")
        release_training_memory(model, env)
        generator = vllm_generator(recipe, str(model_dir), evaluator.setup.tokenizer)
    try:
        for split in recipe.eval.splits:
            if split not in splits:
                env.reporter.warn(f"eval.splits: split {split!r} is not in the data (have: {', '.join(splits)})")
                continue
            _evaluate_one(recipe, evaluator, model, split, env, out, step, model_step, generator)
    finally:
        if generator is not None:
            generator.close()
    return out


def _evaluate_one(recipe: Recipe, evaluator: SplitEvaluator, model: Any, split: str, env: RunEnv,
                  out: Evaluation, step: int, model_step: int | None, generator: Any) -> None:
    res, preds = evaluator(model, split, limit=recipe.eval.limit, progress=True, generator=generator)
    out.results[split] = res
    out.predictions.extend(preds)
    env.metrics.write(phase="eval", split=split, step=step, model_step=model_step, **res)
    env.reporter.info(f"{split}: accuracy {res['accuracy']:.3f} ({res['correct']}/{res['count']})")


# --- eval.backend: vllm -------------------------------------------------------------------------


def check_vllm_environment(recipe: Recipe, *, processes: int = 1, lora: bool = False) -> None:
    """Refuse ``eval.backend: vllm`` where it cannot run, before any work: vLLM not installed, no
    CUDA device, several processes (one engine evaluates everything), LoRA adapters (not loaded)."""
    if recipe.eval.backend != "vllm":
        return
    if not vllm_backend.vllm_importable():
        raise RecipeError(f"eval.backend: vllm, but vllm is not installed here ({vllm_backend.INSTALL_HINT}); "
                          "or use eval.backend: kpod")
    if not vllm_backend.cuda_present():
        raise RecipeError("eval.backend: vllm needs a CUDA GPU and none is present; use eval.backend: kpod")
    if processes > 1:
        raise RecipeError(f"eval.backend: vllm evaluates in one process, but {processes} are running; launch "
                          "without several processes, or use eval.backend: kpod")
    if lora:
        raise RecipeError(
            "eval.backend: vllm loads full weights, not LoRA adapters (student.lora is set): use eval.backend: "
            "kpod, or after the run `kpod export RUN/model --out merged/` and `kpod eval merged/ --recipe "
            "RUN/recipe.resolved.yaml --set eval.backend=vllm`"
        )


def check_vllm_student(recipe: Recipe, is_encoder_decoder: bool) -> None:
    if recipe.eval.backend == "vllm" and is_encoder_decoder:
        raise RecipeError(
            "eval.backend: vllm is for causal (decoder-only) students, and this one is encoder-decoder: "
            "kpod hands vLLM decoder-only prompts to continue, and current vLLM releases (the V1 engine) do "
            "not run encoder-decoder text models such as T5; use eval.backend: kpod (model.generate for seq2seq)"
        )


def vllm_generator(recipe: Recipe, model_dir: str, tokenizer: Any) -> vllm_backend.VllmGenerator:
    """A vLLM engine over ``model_dir`` with the recipe's ``eval.vllm`` options."""
    opts = recipe.eval.vllm
    return vllm_backend.VllmGenerator(
        model_dir, tokenizer, recipe.eval.max_new_tokens,
        vllm_backend.VllmOptions(opts.gpu_memory_utilization, opts.dtype, opts.enforce_eager, recipe.seed),
    )


def release_training_memory(model: Any, env: RunEnv) -> None:
    """Before vLLM starts: the trained model leaves the GPU and accelerate lets go of the optimizer
    state, since vLLM loads its own copy of the saved weights and takes a fraction of GPU memory
    that must be free (``eval.vllm.gpu_memory_utilization``). An FSDP model (``--launch fsdp``
    with one process) stays where it is: its parameters belong to FSDP's sharding."""
    fsdp = str(env.accelerator.distributed_type).endswith("FSDP")
    env.accelerator.free_memory()
    if not fsdp:
        model.to("cpu")
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
