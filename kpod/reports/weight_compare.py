"""``kpod weights RECIPE --compare``: every registered weighting strategy on the same records.

One table, one row per strategy: keypoint ROC-AUC overall and by kind (numbers, operators, ``=``;
kpod/weighting/evaluate.py) on the training split's side data, the kept ratio under the recipe's
selection policy (mean rationale-token weight; for ``top_k`` the kept share), and the seconds the
strategy took. Each strategy runs as the recipe with ``--set weighting.name=<strategy>`` would
(the recipe's own params for its own strategy, defaults for the others, the recipe's
``weighting.select`` for all). A dynamic strategy (``dft``, ``entropy``) has no weights before
training: it is scored by its signal under the *initial* student (:meth:`snapshot`), which is what
it gives at the first step, not what it gives later. A strategy that cannot run on this recipe
(required params such as ``precomputed``'s file, no side data for ``oracle``, no reference for
``excess_loss``) gets a row that says why.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from kpod import registry
from kpod.data.records import DataError
from kpod.engine.phases import compute_weights
from kpod.models.student import StudentError
from kpod.recipe import RecipeError, load_recipe
from kpod.reports.exports import dynamic_snapshot, offline_setup
from kpod.runs import write_json
from kpod.weighting.evaluate import keypoint_auc
from kpod.weighting.select import kept_ratio, select_static

KINDS = ("number", "operator", "equals")


def compare_weightings(
    recipe_path: Path, overrides: list[str], out_file: Path, quiet: bool = False, only: list[str] | None = None
) -> list[dict[str, Any]]:
    """Score every registered strategy (or ``only`` these) on ``recipe_path``'s training records;
    the rows are also written to ``out_file`` (JSON)."""
    base = load_recipe(recipe_path, overrides)
    setup, device, reporter = offline_setup(base, quiet)
    names = only or registry.WEIGHTING.names()
    rows = []
    for name in names:
        reporter.info(f"weights --compare: {name}")
        rows.append(_score(recipe_path, overrides, base, name, setup, device, reporter))
    write_json(Path(out_file), {"recipe": base.name, "seed": base.seed, "select": base.weighting.select.model_dump(),
                                "rows": rows})
    return rows


def _score(recipe_path: Path, overrides: list[str], base: Any, name: str, setup: Any, device: Any,
           reporter: Any) -> dict[str, Any]:
    row: dict[str, Any] = {"strategy": name}
    try:
        # a dynamic signal is scored under the initial student; the kpod loss (the one that reads
        # it in training) only makes the recipe valid here, whatever loss the recipe trains with
        dynamic = ["loss.name=kpod"] if getattr(registry.WEIGHTING.get(name), "dynamic", False) else []
        recipe = base if base.weighting.name == name else load_recipe(recipe_path, [*overrides, f"weighting.name={name}",
                                                                                     *dynamic])
        start = time.perf_counter()
        weights = compute_weights(recipe, setup, device, reporter)
        if weights.dynamic is not None:  # the signal under the initial student (no weights before training)
            signal = dynamic_snapshot(weights, setup, recipe.seed, device)
            auc = keypoint_auc(setup.train, signal, setup.template, setup.tokenizer)
            shown = select_static(signal, recipe.weighting.select, setup.train, setup.template, setup.tokenizer)
            row["kind"] = "dynamic (initial student)"
        else:
            auc = weights.report.get("keypoint_auc")
            shown = weights.weights
            row["kind"] = "static"
        row["seconds"] = round(time.perf_counter() - start, 2)
    except (RecipeError, DataError, StudentError) as e:
        return {**row, "kind": "-", "skipped": str(e).splitlines()[0]}
    row["auc"] = auc.get("auc") if auc else None
    for kind in KINDS:
        row[f"auc_{kind}"] = ((auc or {}).get("by_kind") or {}).get(kind, {}).get("auc")
    row["kept_ratio"] = kept_ratio(shown, setup.train, setup.template, setup.tokenizer)
    return row


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table (skipped strategies last, with their reason)."""
    def fmt(v: Any) -> str:
        return "–" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)

    head = "| strategy | kind | keypoint AUC | numbers | operators | = | kept ratio | seconds |"
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        if "skipped" not in r:
            cells = [r["strategy"], r["kind"], r["auc"], *(r[f"auc_{k}"] for k in KINDS), r["kept_ratio"], r["seconds"]]
            lines.append("| " + " | ".join(fmt(c) for c in cells) + " |")
    skipped = [f"- {r['strategy']}: skipped ({r['skipped']})" for r in rows if "skipped" in r]
    return "\n".join(lines + ([""] + skipped if skipped else []))
