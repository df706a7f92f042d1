"""Commands that look at recipes, runs and the installation without training."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kpod.cli.common import RecipeArg, SetOpt, escape, out


def report(
    run_dir: Annotated[Path, typer.Argument(help="a run directory", show_default=False)],
    out_file: Annotated[Path | None, typer.Option("--out", "-o", help="HTML file (default: RUN_DIR/report.html)")] = None,
    worst: Annotated[int, typer.Option(help="wrong predictions shown per split")] = 8,
) -> None:
    """One self-contained HTML page for a run: accuracy, curves, curriculum, weights, worst predictions."""
    from kpod.reports.run_report import write_run_report

    path = write_run_report(run_dir, out_file, worst)
    out.print(f"[bold green]wrote[/] {path}", highlight=False)


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

    result = compare_runs(runs, n_resamples=resamples, seed=seed)
    if json_out:
        print(json.dumps(result, indent=2))
        return
    text = to_markdown(result, show)
    if out_file is not None:
        out_file.write_text(text, encoding="utf-8")
    out.print(text, highlight=False, markup=False, soft_wrap=True)


def weights(
    recipe: RecipeArg,
    out_file: Annotated[Path, typer.Option("--out", "-o", help="JSONL: per sample tokens, offsets, weights")],
    html_file: Annotated[Path | None, typer.Option("--html", help="HTML heatmap of the rationales")] = None,
    set_: SetOpt = None,
    limit: Annotated[int, typer.Option(help="samples shown in the HTML")] = 50,
    compare: Annotated[bool, typer.Option(
        "--compare", help="score every registered strategy on the same records (keypoint AUC by kind, kept "
        "ratio, seconds); --out gets the table as JSON")] = False,
    only: Annotated[str | None, typer.Option(help="--compare: these strategies only (comma-separated)")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Fit (or load cached) token weights for a recipe and export them per sample."""
    from kpod.recipe import load_recipe
    from kpod.reports.exports import export_weights
    from kpod.reports.run_report import KEYPOINT_AUC_MEANING, describe_keypoint_auc

    if compare or only is not None:
        _compare_weights(recipe, out_file, set_ or [], only, quiet)
        return
    r = load_recipe(recipe, set_ or [])
    report = export_weights(r, out_file, html_file, html_limit=limit, quiet=quiet)
    auc = report.get("keypoint_auc")
    extra = f"\nkeypoint ROC-AUC {describe_keypoint_auc(auc)}: {KEYPOINT_AUC_MEANING}" if auc else ""
    out.print(f"[bold green]wrote[/] {escape(str(out_file))}" + (f" and {escape(str(html_file))}" if html_file else "")
              + escape(extra), soft_wrap=True)


def _compare_weights(recipe: Path, out_file: Path, set_: list[str], only: str | None, quiet: bool) -> None:
    from kpod.registry import WEIGHTING
    from kpod.reports.weight_compare import compare_weightings, markdown_table

    names = [n.strip() for n in only.split(",") if n.strip()] if only else None
    for n in names or []:
        WEIGHTING.get(n)  # an unknown name is an error with the closest match, before any work
    rows = compare_weightings(recipe, set_, out_file, quiet=quiet, only=names)
    out.print(markdown_table(rows), highlight=False, markup=False, soft_wrap=True)
    out.print(f"[bold green]wrote[/] {out_file}")


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

    r = load_recipe(recipe, set_ or [])
    doc = export_plan(r, out_file, plot_file, quiet=quiet)
    out.print(f"[bold green]wrote[/] {out_file}: {len(doc['stages'])} stages" + (f", plot {plot_file}" if plot_file else ""))


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

    info = describe_data(load_recipe(recipe, set_ or []))
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


def export(
    model_dir: Annotated[Path, typer.Argument(help="a run's model directory holding a LoRA adapter (RUN_DIR/model)")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="where to write the merged model")],
) -> None:
    """Merge a LoRA adapter into its base model and save a plain Hugging Face model directory."""
    from kpod.models.student import export_merged

    path = export_merged(model_dir, out_dir)
    out.print(f"[bold green]wrote[/] {path} (adapter merged; load with transformers' from_pretrained)")


def components(json_out: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False) -> None:
    """Every registered component: kind, name, the distribution that supplies it, its params."""
    import json

    from rich.table import Table

    from kpod.components import describe_components

    rows = describe_components()
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


def schema(
    markdown: Annotated[bool, typer.Option("--markdown", help="the recipe reference as Markdown instead")] = False,
) -> None:
    """Print the recipe JSON Schema (editor completion, validation in other tools)."""
    import json

    from kpod.components import recipe_reference_markdown, recipe_schema

    print(recipe_reference_markdown() if markdown else json.dumps(recipe_schema(), indent=2, default=str), end="")


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
