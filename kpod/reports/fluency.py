"""``kpod fluency``: the recipe's student, before distillation, scored on the training rationales
(:mod:`kpod.fluency`): NLL per token on keypoint, filler and frame tokens."""

from __future__ import annotations

from typing import Any

from kpod.fluency import token_nll_by_class
from kpod.recipe_types import Recipe
from kpod.reports.exports import offline_setup


def fluency_check(recipe: Recipe, quiet: bool = False) -> dict[str, Any]:
    """The student the recipe starts from (a tiny base pre-trained, or loaded, as ``kpod run`` would)."""
    setup, device, _ = offline_setup(recipe, quiet)
    student = setup.student
    student.model.to(device)
    doc = token_nll_by_class(student.model, student.tokenizer, student.is_encoder_decoder, setup.train,
                             setup.template, recipe.difficulty.batch_size, device)
    pretrain = recipe.student.pretrain
    doc["student"] = {"model": recipe.student.model, "pretrain_corpus": pretrain.corpus if pretrain else None}
    return doc


def to_markdown(doc: dict[str, Any]) -> str:
    rows = ["| tokens | NLL (nats/token) | count |", "|---|---|---|"]
    rows += [f"| {c} | {v['nll']:.3f} | {v['n']} |" for c, v in doc["classes"].items()]
    student = doc["student"]
    head = (f"student {student['model']}" + (f" (pre-trained on {student['pretrain_corpus']})"
            if student["pretrain_corpus"] else "") + f", {doc['records']} training rationales with side data")
    return head + "\n\n" + "\n".join(rows)
