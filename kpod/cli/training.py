"""Commands that validate, train, evaluate and sweep recipes, and generate teacher rationales."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kpod.cli.common import RecipeArg, SetOpt, checkpoint_note, err, next_steps, out


def validate(recipe: RecipeArg, set_: SetOpt = None) -> None:
    """Validate a recipe (and overrides) without running it; print the resolved recipe."""
    from kpod.recipe import dump_recipe, load_recipe

    r = load_recipe(recipe, set_ or [])
    out.print(dump_recipe(r), highlight=False, markup=False)
    err.print(f"[green]ok[/]: {recipe}")


def run(
    recipe: RecipeArg,
    set_: SetOpt = None,
    out_dir: Annotated[
        Path | None, typer.Option("--out", "-o", help="run directory (default: runs/<name>-seed<seed>)")
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="continue from the last checkpoint")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace an existing run directory")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress output")] = False,
    launch: Annotated[
        str | None,
        typer.Option("--launch", help="run under accelerate: single_gpu | multi_gpu | fsdp | multi_cpu, or a config file"),
    ] = None,
    num_processes: Annotated[int | None, typer.Option("--num-processes", help="with --launch: processes (default: the preset's, or one per GPU)")] = None,
    port: Annotated[int | None, typer.Option("--main-process-port", help="with --launch: rendezvous port")] = None,
) -> None:
    """Train and evaluate one recipe; writes a run directory with summary.json."""
    from kpod.engine.run import default_out_dir, run_recipe
    from kpod.engine.run_lock import die_with_parent, terminate_as_exit
    from kpod.engine.train import NonFiniteLossError
    from kpod.recipe import load_recipe
    from kpod.runs import RunWriteError

    if launch is not None:  # validate here, then start one `kpod run` per process under the preset
        from kpod import launch as launcher

        args = ["run", str(recipe)] + [a for s in set_ or [] for a in ("--set", s)]
        args += (["--out", str(out_dir)] if out_dir else []) + (["--resume"] if resume else [])
        args += (["--overwrite"] if overwrite else []) + (["--quiet"] if quiet else [])
        load_recipe(recipe, set_ or [])
        raise typer.Exit(launcher.launch(launch, args, num_processes, port))
    die_with_parent()  # a run started by `kpod ablate` ends with it
    target = out_dir

    def resume_hint() -> str:  # reads ``target`` when the error happens: the loaded recipe names it
        return f"continue with: kpod run {recipe} --resume --out {target}"

    with next_steps({
        NonFiniteLossError: lambda: checkpoint_note(target),
        # disk full or I/O error mid-run: a failed run (1), resumable
        RunWriteError: lambda: f"{checkpoint_note(target)}; free space, then {resume_hint()}",
        KeyboardInterrupt: resume_hint,
    }):
        r = load_recipe(recipe, set_ or [])
        target = out_dir or default_out_dir(r)
        with terminate_as_exit():  # SIGTERM releases the run lock like any other exit
            summary = run_recipe(r, target, resume=resume, overwrite=overwrite, quiet=quiet)
    acc = ", ".join(f"{k} {v['accuracy']:.1%} (n={v['count']})" for k, v in summary["splits"].items())
    out.print(f"[bold green]done[/] {target}: {acc}; {summary['wall_seconds']['total']:.0f} s")


def eval_(
    model: Annotated[str, typer.Argument(help="a run directory, a model directory (full or LoRA adapter) or a hub id", show_default=False)],
    recipe: Annotated[Path | None, typer.Option("--recipe", "-r", help="recipe (template, extractor, data); default: the run's recipe.resolved.yaml")] = None,
    split: Annotated[list[str] | None, typer.Option("--split", help="split to evaluate (repeatable); default: the recipe's eval.splits")] = None,
    data: Annotated[list[str] | None, typer.Option("--data", help="other data: NAME:PATH, a .json/.jsonl file, a recipe .yaml, or a source name (repeatable)")] = None,
    set_: SetOpt = None,
    out_dir: Annotated[Path | None, typer.Option("--out", "-o", help="output directory (default: RUN/eval/<data>)")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Evaluate a saved model with a recipe's template and extractor; predictions.jsonl + summary.json."""
    from kpod.engine.offline_eval import evaluate_saved

    summary = evaluate_saved(model, recipe, splits=split, data=data, overrides=set_ or [], out_dir=out_dir, quiet=quiet)
    acc = ", ".join(f"{k} {v['accuracy']:.1%} (n={v['count']})" for k, v in summary["splits"].items())
    out.print(f"[bold green]done[/] {summary['out']}: {acc}", highlight=False)


def ablate(
    recipe: RecipeArg,
    vary: Annotated[
        list[str] | None,
        typer.Option("--vary", help="scheduler | weighting | loss | KIND=a,b | dotted.field=v1,v2 (repeat for a grid)"),
    ] = None,
    preset: Annotated[str | None, typer.Option(help="paper: the Table 2 variants (ablations/*.yaml next to RECIPE, else RECIPE with the same overrides); baselines: Table 1's (baselines/*.yaml next to RECIPE); weighting: every token signal × {weight, top_k} with the kpod loss; keypoints: std_cot, w.o.-prog, kpod and the oracle keypoint weights; kd: std_cot, kd_topk, kd_keypoint, gkd, kpod_full next to RECIPE (recipes/kd/)")] = None,
    seeds: Annotated[int, typer.Option(help="seeds 0..N-1 per variant")] = 3,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="ablation directory")] = Path("runs/ablate"),
    jobs: Annotated[int, typer.Option(help="runs in parallel (separate processes)")] = 1,
    threads: Annotated[int | None, typer.Option(help="CPU threads per run (OMP_NUM_THREADS)")] = None,
    executor: Annotated[str, typer.Option(help="local (child processes) or ray (Ray tasks)")] = "local",
    ray_address: Annotated[
        str | None, typer.Option(help="Ray cluster address ('auto' joins a running one; default: start a local one)")
    ] = None,
    set_: SetOpt = None,
) -> None:
    """Run variants × seeds of a recipe; results.csv, table.md (mean ± std, 95 % CI), plot.png."""
    from kpod.ablate import (
        aggregate,
        console_table,
        execute,
        expand,
        make_runner,
        plan_runs,
        progress_line,
        write_outputs,
    )

    variants = expand(recipe, vary or [], preset)
    specs = plan_runs(variants, list(range(seeds)), out_dir, set_ or [])
    runner = make_runner(executor, threads, ray_address)
    err.print(f"{len(variants)} variant(s) × {seeds} seed(s) = {len(specs)} runs → {out_dir}")
    with next_steps({KeyboardInterrupt: lambda: f"finished runs are kept in {out_dir}; rerun the same command to continue"}):
        results = execute(specs, runner, jobs,
                          on_result=lambda r: err.print(progress_line(r), highlight=False, markup=False))
    rows = aggregate(results)
    write_outputs(results, rows, out_dir)
    out.print(console_table(rows, f"kpod ablate: {recipe}"))
    out.print(f"results: {out_dir}/results.csv, {out_dir}/table.md, {out_dir}/plot.png")
    if any(r.status == "failed" for r in results):
        raise typer.Exit(1)


def teach(
    recipe: RecipeArg,
    set_: SetOpt = None,
    out_dir: Annotated[
        Path | None, typer.Option("--out", "-o", help="output directory (default: runs/<name>-teach)")
    ] = None,
    limit: Annotated[int | None, typer.Option(help="at most N questions per split (overrides teacher.limit)")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress output")] = False,
) -> None:
    """Generate teacher rationales (resumable), filter them, write <split>.json per split."""
    import kpod.engine  # noqa: F401  (teacher.model may be trained:RECIPE)
    from kpod.recipe import load_recipe
    from kpod.runs import RunWriteError
    from kpod.teach.run import teach as run_teach

    target = out_dir
    with next_steps({
        RunWriteError: lambda: "every earlier reply is saved — free space, then rerun the same command to resume",
        KeyboardInterrupt: lambda: f"every finished reply is saved — rerun the same command to resume ({target})",
    }):
        r = load_recipe(recipe, set_ or [])
        target = out_dir or Path("runs") / f"{r.name}-teach"
        summary = run_teach(r, target, limit=limit, quiet=quiet)
    run_, total = summary["this_run"], summary["all_replies"]
    cost = f", estimated ${total['cost_usd']:.4f} (this run ${run_['cost_usd']:.4f})" if total["cost_usd"] is not None else ""
    out.print(f"teacher replies: {run_['rows']} generated, {total['rows'] - run_['rows']} from the cache; "
              f"{total['prompt_tokens']} prompt + {total['completion_tokens']} completion tokens{cost}", highlight=False, soft_wrap=True)
    for split, c in summary["splits"].items():
        out.print(f"{split}: kept {c['kept']} of {c['rationales']} rationales ({c['dropped_wrong_answer']} wrong answer, "
                  f"{c['dropped_empty']} empty, {c['dropped_not_first']} not first, {c['dropped_truncated']} cut at max_tokens); {c['questions_kept']} of "
                  f"{c['questions']} questions kept → {c['file']}", highlight=False, soft_wrap=True)
    out.print(f"[bold green]done[/] {target}/teach_summary.json", highlight=False, soft_wrap=True)
