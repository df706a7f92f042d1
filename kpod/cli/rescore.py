"""``kpod rescore``: a local teacher's per-token top-k distributions of the recipe's rationales."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kpod.cli.common import RecipeArg, SetOpt, out


def rescore(
    recipe: RecipeArg,
    teacher: Annotated[str, typer.Option(help="causal teacher: hub id, model or run directory, pkg:…, trained:RECIPE")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="the top-k store directory (resumed if it exists)")],
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="ids and log-probs kept per target token")] = 20,
    gguf_file: Annotated[str | None, typer.Option(help="a GGUF checkpoint beside --teacher")] = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 8,
    set_: SetOpt = None,
) -> None:
    """Score the recipe's training rationales token by token with a teacher, without generating, for the kd loss (loss.params.teacher_store)."""
    import kpod.engine  # noqa: F401  (--teacher may be trained:RECIPE)
    from kpod.recipe import load_recipe
    from kpod.teach.rescore import rescore_recipe

    doc = rescore_recipe(load_recipe(recipe, set_ or []), teacher, out_dir, top_k, gguf_file, batch_size)
    out.print(f"[bold green]stored[/] {doc['records']} rationales, {doc['tokens']} tokens, top-{doc['k']} "
              f"({doc['scored']} scored now, {doc['already_stored']} already there): {doc['bytes']} bytes, "
              f"{doc['bytes_per_1000_tokens']} per 1,000 tokens → {out_dir}", soft_wrap=True)
