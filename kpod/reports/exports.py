"""The commands that look at a recipe without training it: ``kpod weights`` (token weights per
sample, JSONL + HTML heatmap), ``kpod plan`` (the curriculum plan, JSON + plot) and ``kpod data``
(rows, rationales and steps per split). They share the run's first phases
(:func:`kpod.engine.prepare.prepare`, :mod:`kpod.engine.phases`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from kpod.data.records import CharSpanWeights
from kpod.engine.phases import Weights, compute_weights, make_plan
from kpod.engine.prepare import Setup, prepare, prepare_data
from kpod.progress import Reporter, silence_transformers_progress
from kpod.recipe_types import Recipe
from kpod.reports import figures
from kpod.runs import atomic_write_text, write_json, writing
from kpod.schedulers.base import CurriculumPlan
from kpod.weighting.base import WeightingContext
from kpod.weighting.evaluate import keypoint_auc


def offline_setup(recipe: Recipe, quiet: bool) -> tuple[Setup, Any, Reporter]:
    silence_transformers_progress()  # the predictor's "Loading weights" bar is not token weights
    reporter = Reporter(quiet=quiet)
    setup = prepare(recipe, reporter)
    return setup, torch.device("cuda" if torch.cuda.is_available() else "cpu"), reporter


def export_weights(
    recipe: Recipe, out_file: Path, html_file: Path | None = None, html_limit: int = 50, quiet: bool = False
) -> dict[str, Any]:
    """``kpod weights``: the data, student and weighting phases of a run, then the export."""
    from kpod.weighting.export import render_html, token_rows
    from kpod.weighting.export import write_jsonl as write_rows

    setup, device, reporter = offline_setup(recipe, quiet)
    weights = compute_weights(recipe, setup, device, reporter)
    shown, title = weights.weights, f"{recipe.name}: {recipe.weighting.name} weights"
    report = dict(weights.report)
    if weights.dynamic is not None:  # no weights before training: its signal under the initial student
        shown = dynamic_snapshot(weights, setup, recipe.seed, device)
        title += " (dynamic: the signal under the initial student)"
        report["keypoint_auc"] = keypoint_auc(setup.train, shown, setup.template, setup.tokenizer)
    rows = token_rows(setup.train, shown, setup.template, setup.tokenizer)
    write_rows(rows, Path(out_file))
    if html_file is not None:
        atomic_write_text(Path(html_file), render_html(rows, title, html_limit))
    return report


def dynamic_snapshot(weights: Weights, setup: Setup, seed: int, device: Any) -> CharSpanWeights:
    """A dynamic strategy's signal under the initial student, as character spans (what it gives at
    the first training step)."""
    assert weights.dynamic is not None
    ctx = WeightingContext(records=setup.train, seed=seed, student=setup.student, template=setup.template, device=device)
    return weights.dynamic.signal.snapshot(ctx)  # type: ignore[attr-defined, no-any-return]


def questions_per_c(plan: CurriculumPlan) -> list[dict[int, int]]:
    """For each stage: how many questions are given ``c`` leading steps, by ``c`` (the ``c`` the
    collator trains on: a whole-rationale-given record counts at its step count)."""
    counts = []
    for stage in plan.effective_stages():
        hist: dict[int, int] = {}
        for c in stage.values():
            hist[int(c)] = hist.get(int(c), 0) + 1
        counts.append(dict(sorted(hist.items())))
    return counts


def export_plan(recipe: Recipe, out_file: Path, plot_file: Path | None = None, quiet: bool = False) -> dict[str, Any]:
    """``kpod plan``: data, student, weights and the curriculum plan, written as JSON (+ plot)."""
    setup, device, reporter = offline_setup(recipe, quiet)
    weights = compute_weights(recipe, setup, device, reporter)
    plan = make_plan(recipe, setup, weights, device, reporter)
    doc = {
        "recipe": recipe.name,
        "scheduler": recipe.scheduler.name,
        "epochs": recipe.train.epochs,
        "report": plan.report,
        "questions_per_c": [{str(c): n for c, n in hist.items()} for hist in questions_per_c(plan.plan)],
        **plan.plan.to_json(),
    }
    write_json(Path(out_file), doc)
    if plot_file is not None:
        plot_plan(doc, Path(plot_file))
    return doc


def plot_plan(doc: dict[str, Any], path: Path) -> None:
    """The plan's figure (the run report's curriculum plot) as a PNG file."""
    counts = [{int(c): n for c, n in stage.items()} for stage in doc["questions_per_c"]]
    png = figures.curriculum(doc.get("info", {}).get("stages", []), counts, f"{doc['recipe']}: {doc['scheduler']} plan")
    with writing(path):
        path.write_bytes(png)


def describe_data(recipe: Recipe) -> dict[str, Any]:
    """``kpod data``: rows per split, steps per rationale, rationales kept and dropped."""
    data = prepare_data(recipe, warn=lambda _: None)  # `kpod data` lists the bad rows itself
    out: dict[str, Any] = {"source": recipe.data.source.name, "splits": {}, "source_report": data.report}
    for split, recs in data.splits.items():
        hist: dict[int, int] = {}
        for r in recs:
            hist[r.n_steps] = hist.get(r.n_steps, 0) + 1
        out["splits"][split] = {
            "records": len(recs),
            "questions": len({r.sample_id.split("#")[0] for r in recs}),
            "with_rationale": sum(1 for r in recs if r.steps),
            "steps_histogram": {str(k): v for k, v in sorted(hist.items())},
            "mean_steps": round(sum(r.n_steps for r in recs) / len(recs), 3) if recs else 0.0,
        }
    return out
