"""The phases between the data and the training: token weights (the recipe's weighting
strategy), then step difficulties and question clusters if the scheduler needs them, then the
curriculum plan. Each takes the :class:`~kpod.engine.prepare.Setup` and returns a result with
the report that goes into summary.json."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from kpod import registry
from kpod.data.collate import given_all
from kpod.data.packing import pack_row_factor
from kpod.engine.fastpath import resolve_difficulty_chunk, resolve_packing
from kpod.engine.prepare import Setup
from kpod.losses.dynamic import DynamicWeights
from kpod.progress import Reporter
from kpod.recipe import build_component
from kpod.recipe_types import Recipe
from kpod.runs import MetricsWriter
from kpod.schedulers.base import CurriculumPlan, ScheduleInputs, Scheduler
from kpod.weighting.base import CharSpanWeights, WeightingContext
from kpod.weighting.cached import compute_cached
from kpod.weighting.dynamic import DynamicStrategy
from kpod.weighting.evaluate import keypoint_auc
from kpod.weighting.select import kept_ratio, select_static


@dataclass
class Weights:
    """Token weights as character spans by sample_id (None: every token weighs 1)."""

    weights: CharSpanWeights | None
    report: dict[str, Any] = field(default_factory=dict)
    # a dynamic strategy's signal under the selection policy, applied in the loss at every step
    # (kpod/losses/dynamic.py); None for a static strategy
    dynamic: DynamicWeights | None = None


@dataclass
class Difficulty:
    """Eq. 8 step difficulties by sample_id (one value per step) and their summary."""

    per_step: dict[str, list[float]]
    report: dict[str, Any]


@dataclass
class Plan:
    plan: CurriculumPlan
    report: dict[str, Any] = field(default_factory=dict)
    # the recipe's scheduler, built once: an adaptive one (schedulers/base.py) keeps deciding
    # stages during training, so the Trainer needs this same object
    scheduler: Scheduler | None = None


def compute_weights(
    recipe: Recipe, setup: Setup, device: Any, reporter: Reporter, metrics: MetricsWriter | None = None
) -> Weights:
    """Fit (or load from cache: :func:`~kpod.weighting.cached.compute_cached`) the recipe's
    weighting strategy, and score the weights against the data's keypoints where it has them."""
    weighting = build_component(registry.WEIGHTING, recipe.weighting)
    ctx = WeightingContext(
        records=setup.train,
        seed=recipe.seed,
        student=setup.student,
        template=setup.template,
        device=device,
        reporter=reporter,
        metrics=metrics,
        packing=recipe.train.packing,
    )
    weights, report = compute_cached(weighting, ctx)
    keypoints = keypoint_auc(setup.train, weights, setup.template, setup.tokenizer)
    if keypoints is not None:
        report["keypoint_auc"] = keypoints
    if report.get("cache_hit"):
        reporter.info(f"weights: cache hit ({report.get('cache_path', '')})")
    return select_weights(recipe, setup, weighting, weights, report)


def select_weights(recipe: Recipe, setup: Setup, weighting: Any, weights: CharSpanWeights | None,
                   report: dict[str, Any]) -> Weights:
    """The recipe's selection policy (``weighting.select``) on the strategy's signal: a dynamic
    strategy's goes to the loss, a static one's top_k mask is made here, once."""
    selection = recipe.weighting.select
    report["select"] = selection.model_dump()
    if isinstance(weighting, DynamicStrategy):
        return Weights(None, report, DynamicWeights(weighting, selection.policy, selection.k))
    selected = select_static(weights, selection, setup.train, setup.template, setup.tokenizer)
    if selection.policy == "top_k":
        report["kept_ratio"] = kept_ratio(selected, setup.train, setup.template, setup.tokenizer)
    return Weights(selected, report)


def measure_difficulty(recipe: Recipe, setup: Setup, weights: Weights, device: Any, reporter: Reporter) -> Difficulty:
    """Eq. 8 from the initial student (cached), with the spread that says whether "easy to hard"
    carries a signal (a random student: all ≈ log|V|) and a histogram for `kpod report`."""
    from kpod.cache import cache_root
    from kpod.difficulty import compute_difficulties

    if recipe.student.model.startswith("tiny:") and recipe.student.pretrain is None:
        reporter.warn(
            "step difficulty comes from a randomly initialised student: difficulties are near "
            "log|V| and the plan is mostly cluster-balanced (docs/method.md)"
        )
    student = setup.student
    # the training's packing setting and probe (kpod/engine/fastpath.py); the loss plays no part
    # in this pass, so only the student decides (an explicit `true` it cannot take is an error)
    student.model.to(device)
    vocab = student.model.get_input_embeddings().num_embeddings
    packing, packing_reason = resolve_packing(
        recipe.train.packing, student.model, student.is_encoder_decoder, vocab, torch.device(device)
    )
    chunk, chunk_reason = resolve_difficulty_chunk(recipe.train.loss_chunk_tokens, student.model)
    difficulties = compute_difficulties(
        student.model, student.tokenizer, student.is_encoder_decoder, setup.train, setup.template, weights.weights,
        mode=recipe.difficulty.within_step, batch_size=recipe.difficulty.batch_size, device=device,
        cache_dir=cache_root(), packing=packing, pack_rows_of=pack_row_factor(student.model), chunk_tokens=chunk,
    )
    for r in setup.train:  # questions without a rationale have no steps to schedule
        difficulties.setdefault(r.sample_id, [])
    flat = [d for v in difficulties.values() for d in v]
    q = np.percentile(flat, [0, 10, 50, 90, 100]) if flat else [0.0] * 5
    counts, edges = np.histogram(flat or [0.0], bins=20)  # step difficulties (nats)
    report = {
        "within_step": recipe.difficulty.within_step,
        "packing": packing_reason,
        "chunked_head": chunk_reason,
        "total_B": round(float(sum(flat)), 4),
        "mean": round(float(np.mean(flat)), 4),
        "std": round(float(np.std(flat)), 4),
        "min_p10_median_p90_max": [round(float(x), 4) for x in q],
        "log_vocab": round(float(np.log(len(student.tokenizer))), 4),
        "histogram": {"counts": counts.astype(int).tolist(), "edges": [round(float(e), 4) for e in edges]},
    }
    return Difficulty(difficulties, report)


STAGE_KEYS = ("stage", "epoch", "selected", "candidates", "delta_D", "delta_H", "F", "G", "target_D", "achieved_H")


def make_plan(recipe: Recipe, setup: Setup, weights: Weights, device: Any, reporter: Reporter) -> Plan:
    """Difficulties and clusters if the scheduler needs them, then the curriculum plan."""
    from kpod.clusters import question_clusters

    scheduler = build_component(registry.SCHEDULERS, recipe.scheduler)
    needs = scheduler.needs
    report: dict[str, Any] = {}
    difficulty = clusters = None
    if "difficulty" in needs:
        difficulty = measure_difficulty(recipe, setup, weights, device, reporter)
        report["difficulty"] = difficulty.report
    if "clusters" in needs:
        clusters, report["clusters"] = question_clusters(
            setup.train, recipe.clusters, recipe.seed, setup.student.model, setup.tokenizer
        )
    inputs = ScheduleInputs(
        n_steps={r.sample_id: r.n_steps for r in setup.train},
        num_epochs=recipe.train.epochs,
        seed=recipe.seed,
        difficulties=difficulty.per_step if difficulty is not None else None,
        clusters=clusters,
    )
    plan: CurriculumPlan = scheduler.plan(inputs)
    # what the collator trains on for whole-rationale-given records, shown in plan.json
    plan.given_all = {r.sample_id: r.n_steps for r in setup.train if given_all(r)} or None
    stages = plan.info.get("stages") if isinstance(plan.info, dict) else None
    if stages:  # per-stage selection statistics: the plan.json has them too
        report["stages"] = [{k: st[k] for k in STAGE_KEYS if k in st} for st in stages]
    return Plan(plan, report, scheduler)
