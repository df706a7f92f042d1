"""``kpod`` command line: each command parses, calls one library function, prints.

Exit codes: 0 success, 2 bad input (recipe, data, run directory), 1 a run that failed.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

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
    from kpod.data.records import DataError
    from kpod.engine.student import StudentError
    from kpod.recipe import RecipeError
    from kpod.registry import RegistryError
    from kpod.runs import RunDirError

    return (RecipeError, DataError, StudentError, RunDirError, RegistryError)


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
) -> None:
    """Train and evaluate one recipe; writes a run directory with summary.json."""
    from kpod.engine.run import default_out_dir, run_recipe
    from kpod.engine.train import NonFiniteLossError
    from kpod.recipe import load_recipe

    try:
        r = load_recipe(recipe, set_ or [])
        target = out_dir or default_out_dir(r)
        summary = run_recipe(r, target, resume=resume, overwrite=overwrite, quiet=quiet)
    except _bad_input_errors() as e:
        raise _fail(str(e), 2) from None
    except NonFiniteLossError as e:
        raise _fail(f"{e}; the last good checkpoint is kept in {target}/checkpoints", 1) from None
    except KeyboardInterrupt:
        raise _fail(f"interrupted; continue with: kpod run {recipe} --resume --out {target}", 130) from None
    acc = ", ".join(f"{k} {v['accuracy']:.1%} (n={v['count']})" for k, v in summary["splits"].items())
    out.print(f"[bold green]done[/] {target}: {acc}; {summary['wall_seconds']['total']:.0f} s")


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
    from kpod.engine.run import export_weights
    from kpod.recipe import load_recipe

    try:
        r = load_recipe(recipe, set_ or [])
        report = export_weights(r, out_file, html_file, html_limit=limit, quiet=quiet)
    except _bad_input_errors() as e:
        raise _fail(str(e), 2) from None
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
    from kpod.engine.run import export_plan
    from kpod.recipe import load_recipe

    try:
        r = load_recipe(recipe, set_ or [])
        doc = export_plan(r, out_file, plot_file, quiet=quiet)
    except _bad_input_errors() as e:
        raise _fail(str(e), 2) from None
    out.print(f"[bold green]wrote[/] {out_file}: {len(doc['stages'])} stages" + (f", plot {plot_file}" if plot_file else ""))


def main() -> None:
    try:
        app()
    except BrokenPipeError:  # e.g. `kpod validate r.yaml | head`
        sys.exit(0)


if __name__ == "__main__":
    main()
