"""``kpod`` command line: each command parses, calls one library function, prints.

Exit codes: 0 success, 2 bad input (recipe, data, run directory), 1 a run that failed (non-finite
loss, a write that failed mid-run, e.g. a full disk).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="KPOD: keypoint-based progressive chain-of-thought distillation.",
)
err = Console(stderr=True)
out = Console()

RecipeArg = Annotated[Path, typer.Argument(help="recipe YAML file", show_default=False)]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="override a recipe field: --set train.lr=1e-3 (repeatable)"),
]


def _bad_input_errors() -> tuple[type[BaseException], ...]:
    from kpod.compare import CompareError
    from kpod.data.records import DataError
    from kpod.engine.student import StudentError
    from kpod.recipe import RecipeError
    from kpod.registry import RegistryError
    from kpod.reports.figures import ReportError
    from kpod.runs import RunDirError
    from kpod.tracking import TrackerError

    return (RecipeError, DataError, StudentError, RunDirError, RegistryError, TrackerError, CompareError, ReportError)


def _checkpoint_note(run_dir: Path) -> str:
    from kpod.runs import last_checkpoint

    last = last_checkpoint(Path(run_dir))
    return f"the last complete checkpoint, {last}, is intact" if last else "no checkpoint had been written yet"


def _fail(message: str, code: int) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", highlight=False, markup=True, soft_wrap=True)
    return typer.Exit(code)


@app.command()
def validate(recipe: RecipeArg, set_: SetOpt = None) -> None:
    """Validate a recipe (and overrides) without running it; print the resolved recipe."""
    from kpod.recipe import dump_recipe, load_recipe

    try:
        r = load_recipe(recipe, set_ or [])
    except _bad_input_errors() as e:
        raise _fail(str(e), 2) from None
    out.print(dump_recipe(r), highlight=False, markup=False)
    err.print(f"[green]ok[/]: {recipe}")


@app.command()
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
    from kpod.engine.train import NonFiniteLossError
    from kpod.recipe import load_recipe
    from kpod.runs import RunWriteError

    if launch is not None:  # validate here, then start one `kpod run` per process under the preset
        from kpod import launch as launcher

        args = ["run", str(recipe)] + [a for s in set_ or [] for a in ("--set", s)]
        args += (["--out", str(out_dir)] if out_dir else []) + (["--resume"] if resume else [])
        args += (["--overwrite"] if overwrite else []) + (["--quiet"] if quiet else [])
        try:
            load_recipe(recipe, set_ or [])
            code = launcher.launch(launch, args, num_processes, port)
        except _bad_input_errors() as e:
            raise _fail(str(e), 2) from None
        raise typer.Exit(code)
    try:
        r = load_recipe(recipe, set_ or [])
        target = out_dir or default_out_dir(r)
        summary = run_recipe(r, target, resume=resume, overwrite=overwrite, quiet=quiet)
    except _bad_input_errors() as e:
        raise _fail(str(e), 2) from None
    except NonFiniteLossError as e:
        raise _fail(f"{e}; {_checkpoint_note(target)}", 1) from None
    except RunWriteError as e:  # disk full or I/O error mid-run: a failed run (1), resumable
        raise _fail(f"{e}; {_checkpoint_note(target)}; free space, then continue with: "
                    f"kpod run {recipe} --resume --out {target}", 1) from None
    except KeyboardInterrupt:
        raise _fail(f"interrupted; continue with: kpod run {recipe} --resume --out {target}", 130) from None
    acc = ", ".join(f"{k} {v['accuracy']:.1%} (n={v['count']})" for k, v in summary["splits"].items())
    out.print(f"[bold green]done[/] {target}: {acc}; {summary['wall_seconds']['total']:.0f} s")


@app.command("eval")
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
    from kpod.runs import RunWriteError

    try:
        summary = evaluate_saved(model, recipe, splits=split, data=data, overrides=set_ or [], out_dir=out_dir, quiet=quiet)
    except _bad_input_errors() as e:
        raise _fail(str(e), 2) from None
    except RunWriteError as e:
        raise _fail(str(e), 1) from None
    acc = ", ".join(f"{k} {v['accuracy']:.1%} (n={v['count']})" for k, v in summary["splits"].items())
    out.print(f"[bold green]done[/] {summary['out']}: {acc}", highlight=False)


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="a run directory", show_default=False)],
    out_file: Annotated[Path | None, typer.Option("--out", "-o", help="HTML file (default: RUN_DIR/report.html)")] = None,
    worst: Annotated[int, typer.Option(help="wrong predictions shown per split")] = 8,
) -> None:
    """One self-contained HTML page for a run: accuracy, curves, curriculum, weights, worst predictions."""
    from kpod.reports.run_report import write_run_report
    from kpod.runs import RunWriteError

    try:
        path = write_run_report(run_dir, out_file, worst)
    except _bad_input_errors() as e:
        raise _fail(str(e), 2) from None
    except RunWriteError as e:
        raise _fail(str(e), 1) from None
    out.print(f"[bold green]wrote[/] {path}", highlight=False)


@app.command()
def compare(
    runs: Annotated[list[Path], typer.Argument(help="two or more run (or kpod eval) directories", show_default=False)],
    show: Annotated[int, typer.Option(help="questions listed per disagreement direction")] = 10,
    resamples: Annotated[int, typer.Option(help="paired bootstrap resamples")] = 10_000,
    seed: Annotated[int, typer.Option(help="bootstrap seed")] = 0,
    json_out: Annotated[bool, typer.Option("--json", help="machine-readable output (every disagreement)")] = False,
    out_file: Annotated[Path | None, typer.Option("--out", "-o", help="also write the Markdown to this file")] = None,
) -> None:
    """Paired per-question comparison: accuracy, bootstrap interval, McNemar test, disagreements."""
    import json

    from kpod.compare import compare_runs, to_markdown

    try:
        result = compare_runs(runs, n_resamples=resamples, seed=seed)
    except _bad_input_errors() as e:
        raise _fail(str(e), 2) from None
    if json_out:
        print(json.dumps(result, indent=2))
        return
    text = to_markdown(result, show)
    if out_file is not None:
        out_file.write_text(text, encoding="utf-8")
    out.print(text, highlight=False, markup=False, soft_wrap=True)


@app.command()
def weights(
    recipe: RecipeArg,
    out_file: Annotated[Path, typer.Option("--out", "-o", help="JSONL: per sample tokens, offsets, weights")],
    html_file: Annotated[Path | None, typer.Option("--html", help="HTML heatmap of the rationales")] = None,
    set_: SetOpt = None,
    limit: Annotated[int, typer.Option(help="samples shown in the HTML")] = 50,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Fit (or load cached) token weights for a recipe and export them per sample."""
    from kpod.recipe import load_recipe
    from kpod.reports.exports import export_weights
    from kpod.runs import RunWriteError

    try:
        r = load_recipe(recipe, set_ or [])
        report = export_weights(r, out_file, html_file, html_limit=limit, quiet=quiet)
    except _bad_input_errors() as e:
        raise _fail(str(e), 2) from None
    except RunWriteError as e:  # disk full or I/O error: nothing half-written is left
        raise _fail(str(e), 1) from None
    auc = report.get("keypoint_auc")
    extra = f"; keypoint ROC-AUC {auc['auc']:.3f}" if auc else ""
    out.print(f"[bold green]wrote[/] {out_file}" + (f" and {html_file}" if html_file else "") + extra)


@app.command()
def plan(
    recipe: RecipeArg,
    out_file: Annotated[Path, typer.Option("--out", "-o", help="plan JSON: c per sample per stage, D(t) vs H(t), clusters")],
    plot_file: Annotated[Path | None, typer.Option("--plot", help="PNG: budget curves and questions at each c")] = None,
    set_: SetOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Compute the curriculum plan of a recipe (weights, difficulties, clusters) without training."""
    from kpod.recipe import load_recipe
    from kpod.reports.exports import export_plan
    from kpod.runs import RunWriteError

    try:
        r = load_recipe(recipe, set_ or [])
        doc = export_plan(r, out_file, plot_file, quiet=quiet)
    except _bad_input_errors() as e:
        raise _fail(str(e), 2) from None
    except RunWriteError as e:
        raise _fail(str(e), 1) from None
    out.print(f"[bold green]wrote[/] {out_file}: {len(doc['stages'])} stages" + (f", plot {plot_file}" if plot_file else ""))


@app.command()
def ablate(
    recipe: RecipeArg,
    vary: Annotated[
        list[str] | None,
        typer.Option("--vary", help="scheduler | weighting | loss | KIND=a,b | dotted.field=v1,v2 (repeat for a grid)"),
    ] = None,
    preset: Annotated[str | None, typer.Option(help="paper: the Table 2 variants next to RECIPE")] = None,
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
    from rich.table import Table

    from kpod.ablate import (
        aggregate,
        execute,
        expand,
        plan_runs,
        ray_runner,
        subprocess_runner,
        write_outputs,
    )
    from kpod.recipe import RecipeError

    try:
        variants = expand(recipe, vary or [], preset)
        specs = plan_runs(variants, list(range(seeds)), out_dir, set_ or [])
        if executor not in ("local", "ray"):
            raise RecipeError(f"--executor {executor!r}: use 'local' or 'ray'")
        runner = ray_runner(ray_address, threads) if executor == "ray" else subprocess_runner(threads)
    except _bad_input_errors() as e:
        raise _fail(str(e), 2) from None
    err.print(f"{len(variants)} variant(s) × {seeds} seed(s) = {len(specs)} runs → {out_dir}")

    def report(r: Any) -> None:
        splits = r.summary["splits"] if r.summary else {}
        split = "test" if "test" in splits else "validation"  # recipes without a test split report validation
        acc = splits.get(split, {}).get("accuracy")
        note = f"{split} {acc:.1%}" if acc is not None else ((r.error or "").splitlines() or [""])[0][:120]
        err.print(f"  {r.status:7s} {r.spec.variant.name} seed {r.spec.seed}: {note}", highlight=False, markup=False)

    try:
        results = execute(specs, runner, jobs, on_result=report)
    except KeyboardInterrupt:
        raise _fail(f"interrupted; finished runs are kept in {out_dir}; rerun the same command to continue", 130) from None
    rows = aggregate(results)
    write_outputs(results, rows, out_dir)
    table = Table(title=f"kpod ablate: {recipe}")
    for col in ("variant", "split", "n", "mean ± std (%)", "95 % CI", "failed"):
        table.add_column(col)
    for row in rows:
        table.add_row(row["variant"], row["split"], str(row["n"]), f"{row['mean']:.1f} ± {row['std']:.1f}",
                      f"[{row['ci_low']:.1f}, {row['ci_high']:.1f}]", str(row["failed"]))
    out.print(table)
    out.print(f"results: {out_dir}/results.csv, {out_dir}/table.md, {out_dir}/plot.png")
    if any(r.status == "failed" for r in results):
        raise typer.Exit(1)


@app.command()
def data(
    recipe: RecipeArg,
    set_: SetOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """The recipe's data: rows per split, steps per rationale, rationales kept and dropped and why."""
    import json

    from rich.table import Table

    from kpod.recipe import load_recipe
    from kpod.reports.exports import describe_data

    try:
        info = describe_data(load_recipe(recipe, set_ or []))
    except _bad_input_errors() as e:
        raise _fail(str(e), 2) from None
    if json_out:
        print(json.dumps(info, indent=2))
        return
    table = Table(title=f"kpod data: {recipe} ({info['source']})")
    for col in ("split", "records", "questions", "with rationale", "mean steps", "steps: count"):
        table.add_column(col)
    for split, d in info["splits"].items():
        hist = " ".join(f"{k}:{v}" for k, v in d["steps_histogram"].items())
        table.add_row(split, str(d["records"]), str(d["questions"]), str(d["with_rationale"]), f"{d['mean_steps']:.2f}", hist)
    out.print(table)
    for split, c in (info["source_report"].get("splits") or {}).items():
        out.print(f"{split}: {c['rationales']} teacher rationales for {c['rows']} rows; kept {c['kept']}, "
                  f"dropped {c['dropped_wrong_answer']} with a wrong answer; {c['questions_dropped']} questions "
                  f"left without a correct rationale; {c['questions_without_rationale']} rows have none "
                  f"(mode: {info['source_report'].get('rationales')})", highlight=False)
    bad = info["source_report"].get("bad_rows") or {}
    if bad.get("count"):
        reasons = ", ".join(f"{k} {v}" for k, v in bad["by_reason"].items())
        out.print(f"skipped {bad['count']} bad rows (data.on_bad_row: skip): {reasons}", highlight=False, soft_wrap=True)
        for row in bad["rows"][:20]:
            out.print(f"  {row['where']}: {row['detail']}", highlight=False, markup=False, soft_wrap=True)
        if bad["count"] > 20:
            out.print(f"  ... and {bad['count'] - 20} more (all of them: kpod data --json)", highlight=False)


@app.command()
def export(
    model_dir: Annotated[Path, typer.Argument(help="a run's model directory holding a LoRA adapter (RUN_DIR/model)")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="where to write the merged model")],
) -> None:
    """Merge a LoRA adapter into its base model and save a plain Hugging Face model directory."""
    from kpod.engine.student import export_merged

    try:
        path = export_merged(model_dir, out_dir)
    except _bad_input_errors() as e:
        raise _fail(str(e), 2) from None
    out.print(f"[bold green]wrote[/] {path} (adapter merged; load with transformers' from_pretrained)")


@app.command()
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
    from kpod.recipe import load_recipe
    from kpod.runs import RunWriteError
    from kpod.teach.base import TeacherError, TeacherUnavailable
    from kpod.teach.run import teach as run_teach

    target = out_dir
    try:
        r = load_recipe(recipe, set_ or [])
        target = out_dir or Path("runs") / f"{r.name}-teach"
        summary = run_teach(r, target, limit=limit, quiet=quiet)
    except TeacherUnavailable as e:
        raise _fail(str(e), 1) from None
    except (*_bad_input_errors(), TeacherError) as e:
        raise _fail(str(e), 2) from None
    except RunWriteError as e:  # the cache holds every reply written before the failure
        raise _fail(f"{e}; every earlier reply is saved — free space, then rerun the same command to resume", 1) from None
    except KeyboardInterrupt:
        raise _fail(f"interrupted; every finished reply is saved — rerun the same command to resume ({target})", 130) from None
    run_, total = summary["this_run"], summary["all_replies"]
    cost = f", estimated ${total['cost_usd']:.4f} (this run ${run_['cost_usd']:.4f})" if total["cost_usd"] is not None else ""
    out.print(f"teacher replies: {run_['rows']} generated, {total['rows'] - run_['rows']} from the cache; "
              f"{total['prompt_tokens']} prompt + {total['completion_tokens']} completion tokens{cost}", highlight=False, soft_wrap=True)
    for split, c in summary["splits"].items():
        out.print(f"{split}: kept {c['kept']} of {c['rationales']} rationales ({c['dropped_wrong_answer']} wrong answer, "
                  f"{c['dropped_empty']} empty, {c['dropped_not_first']} not first); {c['questions_kept']} of "
                  f"{c['questions']} questions kept → {c['file']}", highlight=False, soft_wrap=True)
    out.print(f"[bold green]done[/] {target}/teach_summary.json", highlight=False, soft_wrap=True)


@app.command()
def components(json_out: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False) -> None:
    """Every registered component: kind, name, the distribution that supplies it, its params."""
    import json

    from rich.table import Table

    from kpod.components import describe_components

    try:
        rows = describe_components()
    except _bad_input_errors() as e:
        raise _fail(str(e), 2) from None
    if json_out:
        print(json.dumps(rows, indent=2, default=str))
        return
    table = Table(title="kpod components")
    for col in ("kind", "name", "from", "params (default)"):
        table.add_column(col)
    for r in rows:
        params = ", ".join(f"{p['name']}={p['default']!r}" if not p["required"] else f"{p['name']} (required)" for p in r["params"])
        table.add_row(r["kind"], r["name"], f"{r['distribution'] or r['module']} {r['version'] or ''}".strip(), params or "-")
    out.print(table)


@app.command()
def schema(
    markdown: Annotated[bool, typer.Option("--markdown", help="the recipe reference as Markdown instead")] = False,
) -> None:
    """Print the recipe JSON Schema (editor completion, validation in other tools)."""
    import json

    from kpod.components import recipe_reference_markdown, recipe_schema

    try:
        print(recipe_reference_markdown() if markdown else json.dumps(recipe_schema(), indent=2, default=str), end="")
    except _bad_input_errors() as e:
        raise _fail(str(e), 2) from None


@app.command()
def env() -> None:
    """Versions and hardware a bug report needs."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    import kpod

    rows = [("kpod", kpod.__version__), ("python", platform.python_version()), ("platform", platform.platform())]
    for pkg in ("torch", "transformers", "tokenizers", "accelerate", "pydantic", "typer", "scipy", "datasets", "peft", "ray"):
        try:
            rows.append((pkg, version(pkg)))
        except PackageNotFoundError:
            rows.append((pkg, "not installed"))
    import torch

    rows.append(("cuda", f"{torch.version.cuda} ({torch.cuda.device_count()} GPU)" if torch.cuda.is_available() else "not available"))
    if torch.cuda.is_available():
        rows.append(("gpu", torch.cuda.get_device_name(0)))
    rows.append(("threads", str(torch.get_num_threads())))
    for k, v in rows:
        out.print(f"{k:>13}: {v}", highlight=False)


def main() -> None:
    try:
        app()
    except BrokenPipeError:  # e.g. `kpod validate r.yaml | head`
        sys.exit(0)


if __name__ == "__main__":
    main()
