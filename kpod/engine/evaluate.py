"""Evaluation inside a run: greedy generation + answer extraction on one split, shared by model
selection during training and the final evaluation of every ``eval.splits`` split."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kpod import registry
from kpod.data.load import fit_eval_prompts
from kpod.data.records import Record
from kpod.engine.distributed import RunEnv, gather_predictions
from kpod.engine.prepare import Setup
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

    def __call__(self, model: Any, split: str, *, limit: int | None = None,
                 progress: bool = False) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        setup, recipe, procs, reporter = self.setup, self.recipe, self.env.procs, self.env.reporter
        recs = setup.splits[split][:limit] if limit else setup.splits[split]
        recs = fit_eval_prompts(recipe, split, recs, setup.template, setup.tokenizer, setup.max_length,
                                setup.data_report, reporter.warn)
        mine = recs[procs.process_index :: procs.num_processes]
        with reporter.task(f"eval {split}", total=len(mine), enabled=progress) as advance:
            res, preds = evaluate_split(
                model, setup.tokenizer, mine, setup.template, self.extractor, setup.student.is_encoder_decoder,
                batch_size=recipe.eval.batch_size, max_new_tokens=recipe.eval.max_new_tokens,
                device=self.env.accelerator.device, split=split, on_batch=lambda n: advance(n, ""),
                stop_at_answer=recipe.eval.stop_at_answer, backend=recipe.eval.backend,
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
    *, step: int, model_step: int | None,
) -> Evaluation:
    """Every ``eval.splits`` split the data has, on ``model`` (trained for ``step`` optimizer
    steps; ``model_step`` is the step of the weights it holds, the selected one)."""
    out = Evaluation({}, [], [s for s in recipe.eval.splits if s not in splits])
    for split in recipe.eval.splits:
        if split not in splits:
            env.reporter.warn(f"eval.splits: split {split!r} is not in the data (have: {', '.join(splits)})")
            continue
        res, preds = evaluator(model, split, limit=recipe.eval.limit, progress=True)
        out.results[split] = res
        out.predictions.extend(preds)
        env.metrics.write(phase="eval", split=split, step=step, model_step=model_step, **res)
        env.reporter.info(f"{split}: accuracy {res['accuracy']:.3f} ({res['correct']}/{res['count']})")
    return out
