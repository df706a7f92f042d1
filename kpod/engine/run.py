"""``kpod run``: one recipe along the data path, each phase a function of the ones before it::

    prepare → compute_weights → make_plan → train_student → evaluate_splits → summary.json

Under ``accelerate launch`` every rank runs this; weights and the plan are the main rank's.
"""

from __future__ import annotations

import difflib
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from kpod.engine.capabilities import check_capabilities
from kpod.engine.checkpointing import prepare_resume
from kpod.engine.distributed import (
    RunEnv,
    from_main,
    leave_together,
    make_accelerator,
    processes,
    resolve_precision,
)
from kpod.engine.evaluate import Evaluation, Evaluator, evaluate_splits
from kpod.engine.fit import Trained, train_student
from kpod.engine.phases import Plan, Weights, compute_weights, make_plan
from kpod.engine.prepare import Setup, prepare
from kpod.engine.run_lock import run_dir_lock
from kpod.progress import Reporter, silence_transformers_progress
from kpod.recipe import RecipeError, dump_recipe
from kpod.recipe_types import Recipe
from kpod.runs import (
    MetricsWriter,
    atomic_write_text,
    prepare_run_dir,
    run_summary,
    write_json,
    write_jsonl,
)
from kpod.timing import PhaseTimer
from kpod.tracking import start_tracking
from kpod.weighting.export import write_weight_sample


def default_out_dir(recipe: Recipe) -> Path:
    return Path(os.environ.get("KPOD_RUNS", "runs")) / f"{recipe.name}-seed{recipe.seed}"


def run_recipe(
    recipe: Recipe,
    out_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    quiet: bool = False,
) -> dict[str, Any]:
    """Run one recipe end to end; returns the summary (also written to ``summary.json``)."""
    timer = PhaseTimer()
    silence_transformers_progress()
    procs = processes()
    # what this machine or this student cannot do is refused before the run directory or any training
    check_capabilities(recipe, processes=procs.num_processes)
    # one process per run directory, from before it is looked at until this run ends
    with run_dir_lock(Path(out_dir), enabled=procs.is_main_process):
        return _run_locked(recipe, Path(out_dir), procs, timer, resume=resume, overwrite=overwrite, quiet=quiet)


def _run_locked(
    recipe: Recipe, out_dir: Path, procs: Any, timer: PhaseTimer, *, resume: bool, overwrite: bool, quiet: bool
) -> dict[str, Any]:
    run_dir, resolved = _open_run_dir(recipe, Path(out_dir), procs, resume=resume, overwrite=overwrite)
    if recipe.train.threads:
        torch.set_num_threads(recipe.train.threads)
    reporter = Reporter(quiet=quiet or not procs.is_main_process)

    setup = _prepare_or_clean_up(recipe, reporter, run_dir, resume, procs, timer)
    env = _start(recipe, setup, run_dir, resume, procs, reporter, resolved)
    with timer.phase("weighting"):
        weights: Weights = from_main(procs, compute_weights(recipe, setup, env.accelerator.device, reporter,
                                                            env.metrics))
        if env.is_main:  # a few samples' token weights for `kpod report`'s heatmap
            write_weight_sample(run_dir, setup.train, weights.weights, setup.template, setup.tokenizer)
    with timer.phase("plan"):
        plan: Plan = from_main(procs, make_plan(recipe, setup, weights, env.accelerator.device, reporter))
        if env.is_main:
            write_json(run_dir / "plan.json", plan.plan.to_json())
            if env.metrics.listener is not None:
                env.metrics.listener.set_curriculum(plan.plan.to_json())
    evaluator = Evaluator.for_run(recipe, setup, env)  # model selection during training, then the final evaluation
    with timer.phase("train"):
        trained = train_student(recipe, setup, weights, plan, evaluator, env)
    with timer.phase("eval"):  # the selected model when eval.select_on is set
        evaluation = evaluate_splits(evaluator, trained.model, setup.splits, env,
                                     step=trained.state.global_step, model_step=trained.model_step,
                                     model_dir=run_dir / "model")  # where train_student saved it
    summary = _summary(recipe, setup, env, weights, plan, trained, evaluation, timer)
    if env.is_main:
        write_jsonl(run_dir / "predictions.jsonl", evaluation.predictions)
        write_json(run_dir / "summary.json", summary)
        if env.metrics.listener is not None:
            env.metrics.listener.log_final(evaluation.results, trained.state.global_step)
            env.metrics.listener.finish()
    leave_together(procs, env.accelerator)
    return summary


def _open_run_dir(recipe: Recipe, run_dir: Path, procs: Any, *, resume: bool, overwrite: bool) -> tuple[Path, str]:
    """The run directory, ready on every rank (what a crash left half-written removed on
    ``resume``), and the resolved recipe; ``resume`` refuses a recipe that changed."""
    if procs.is_main_process:
        prepare_run_dir(run_dir, resume=resume, overwrite=overwrite)
    procs.wait_for_everyone()
    resolved = dump_recipe(recipe)
    if resume:
        _check_resume(run_dir, resolved)
        if procs.is_main_process:  # what a crash or kill -9 left half-written goes first
            prepare_resume(run_dir)
        procs.wait_for_everyone()
    return run_dir, resolved


def _prepare_or_clean_up(
    recipe: Recipe, reporter: Reporter, run_dir: Path, resume: bool, procs: Any, timer: PhaseTimer
) -> Setup:
    """:func:`prepare`; if it fails (bad data, too-long rows, …) what it wrote in the run directory
    (a tiny student's tokenizer) is removed, so the rerun is not refused as "already holds a run"."""
    before = set(run_dir.iterdir())
    done = False
    try:
        setup = prepare(recipe, reporter, run_dir=run_dir, resume=resume, procs=procs, timer=timer)
        done = True
    finally:  # the error itself propagates unchanged
        if not done and not resume and procs.is_main_process:
            for p in set(run_dir.iterdir()) - before:
                if p.is_dir():
                    shutil.rmtree(p)
                else:
                    p.unlink()
    return setup


def _check_resume(run_dir: Path, resolved: str) -> None:
    path = run_dir / "recipe.resolved.yaml"
    if path.exists() and path.read_text(encoding="utf-8") != resolved:
        diff = "".join(
            list(difflib.unified_diff(path.read_text().splitlines(True), resolved.splitlines(True), "saved", "now", n=0))[:20]
        )
        raise RecipeError(f"--resume: the recipe differs from the one this run started with:\n{diff}")


def _start(
    recipe: Recipe, setup: Setup, run_dir: Path, resume: bool, procs: Any, reporter: Reporter, resolved: str
) -> RunEnv:
    """The accelerator, the metrics writer (and trackers), the resolved recipe on disk."""
    student = setup.student
    precision = resolve_precision(recipe.train.precision, student)
    accelerator = make_accelerator(precision)
    metrics = MetricsWriter(run_dir / "metrics.jsonl", enabled=accelerator.is_main_process)
    if accelerator.is_main_process:
        atomic_write_text(run_dir / "recipe.resolved.yaml", resolved)
        metrics.listener = start_tracking(recipe, run_dir, resolved)  # None without `track:`
    reporter.info(
        f"{recipe.name}: student {student.source} ({setup.n_params / 1e6:.2f}M params, "
        f"{'seq2seq' if student.is_encoder_decoder else 'causal'}), {len(setup.train)} training examples, "
        f"precision {precision}, device {accelerator.device}"
    )
    return RunEnv(run_dir, resume, procs, accelerator, precision, metrics, reporter)


def _summary(
    recipe: Recipe, setup: Setup, env: RunEnv, weights: Weights, plan: Plan, trained: Trained,
    evaluation: Evaluation, timer: PhaseTimer,
) -> dict[str, Any]:
    student = setup.student
    return run_summary(
        recipe, env.run_dir,
        student={"model": student.source, "params": setup.n_params, "encoder_decoder": student.is_encoder_decoder},
        precision=env.precision, results=evaluation.results, missing_splits=evaluation.missing_splits,
        data={s: len(v) for s, v in setup.splits.items()}, data_report=setup.data_report,
        selection=trained.selection, steps=trained.state.global_step, packing=trained.packing,
        loss_chunk=trained.loss_chunk, weighting=weights.report, scheduler=plan.report, timer=timer,
    )
