"""``kpod fluency``: how fluent the recipe's student already is in the rationales' language."""

from __future__ import annotations

from typing import Annotated

import typer

from kpod.cli.common import RecipeArg, SetOpt, out


def fluency(
    recipe: RecipeArg,
    set_: SetOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="machine-readable output (per sample_id too)")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """The student's NLL per token on the training rationales' keypoint, filler and frame tokens (side data of the built-in set)."""
    import json

    from kpod.data.records import DataError
    from kpod.recipe import load_recipe
    from kpod.reports.fluency import fluency_check, to_markdown

    doc = fluency_check(load_recipe(recipe, set_ or []), quiet=quiet)
    if not doc["classes"]:
        raise DataError(f"{recipe}: no training rationale carries keypoint/filler side data (the built-in arith source has it)")
    if json_out:
        print(json.dumps(doc, indent=2))
        return
    out.print(to_markdown(doc), highlight=False, markup=False, soft_wrap=True)
