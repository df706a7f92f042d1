"""The recipe's data, loaded and checked: rows the source could not read, gold answers the
extractor cannot read, empty training rationales, duplicate sample_ids, and examples longer than
``data.max_length`` in the student's tokens. Every dropped row is counted and listed in the
report that ends up in summary.json."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kpod import registry
from kpod.data.collate import token_lengths
from kpod.data.records import BadRowError, BadRows, DataError, Record
from kpod.data.template import PromptTemplate
from kpod.data.tokenize import Encoded, unknown_tokens
from kpod.recipe import build_component
from kpod.recipe_types import Recipe


def template_from(recipe: Recipe) -> PromptTemplate:
    return PromptTemplate.from_config(recipe.data.template)


def load_data(
    recipe: Recipe, report: dict[str, Any] | None = None, *, training: bool = False, require_train: bool = True
) -> dict[str, list[Record]]:
    """The recipe's data source, loaded; ``report`` (if given) receives the source's counts and
    ``bad_rows`` (every row skipped under ``data.on_bad_row: skip``, with file:line and reason).

    Row checks beyond the source's own: the gold answer must be readable by ``eval.extractor``
    (``AnswerExtractor.check_gold``), and with ``training`` every train record needs a
    rationale unless ``data.template.use_rationale`` is false.
    """
    faults = BadRows(recipe.data.on_bad_row)
    source = build_component(registry.DATA_SOURCES, recipe.data.source)
    splits: dict[str, list[Record]] = source.load(recipe.data.step_splitter.mode, faults=faults)
    extractor = build_component(registry.ANSWER_EXTRACTORS, recipe.eval.extractor)
    need_rationale = training and recipe.data.template.use_rationale
    for split, recs in splits.items():
        kept = []
        for r in recs:
            where = r.meta.get("where") or f"sample {r.sample_id}"
            problem = extractor.check_gold(r.answer)
            if problem is not None:
                faults.handle(BadRowError(where, "bad_answer", problem))
            elif need_rationale and split == "train" and not r.steps:
                faults.handle(BadRowError(
                    where, "empty_rationale",
                    "empty rationale in the training split (CoT training needs one; set "
                    "data.template.use_rationale: false for answer-only training)",
                ))
            else:
                kept.append(r)
        splits[split] = kept
    if require_train and not splits.get("train"):  # `kpod eval` reads evaluation files alone
        raise DataError(f"data.source ({recipe.data.source.name}): no 'train' split, or it is empty")
    _check_unique_ids(splits)
    # the method's own examples (two tasks, several rationales, …), from the checked records
    data_format = build_component(registry.DATA_FORMATS, recipe.data.format)
    expanded = data_format.expand(splits, recipe.seed)
    if expanded is not splits:  # derived ids (``plain`` hands the checked splits back as they are)
        if require_train and not expanded.get("train"):
            raise DataError(f"data.format ({recipe.data.format.name}): it left no training example")
        _check_unique_ids(expanded)
    splits = expanded
    if report is not None:
        report.update(source.report)
        report["bad_rows"] = faults.report()
        report["format"] = dict(data_format.report)
    return splits


def _check_unique_ids(splits: dict[str, list[Record]]) -> None:
    seen: dict[str, Record] = {}
    split_of: dict[str, str] = {}
    for split, recs in splits.items():
        for r in recs:
            if r.sample_id in seen:
                a, b = seen[r.sample_id].meta.get("where"), r.meta.get("where")
                rows = f" ({a} and {b})" if a and b else ""
                raise DataError(
                    f"sample_id {r.sample_id!r} appears in both {split_of[r.sample_id]!r} and {split!r}{rows}"
                )
            seen[r.sample_id], split_of[r.sample_id] = r, split


def check_unknown_tokens(
    recipe: Recipe, texts: dict[str, list[str]], tokenizer: Any, data_report: dict[str, Any],
    warn: Callable[[str], None],
) -> None:
    """Count the tokens the student's tokenizer maps to ``<unk>`` in each split's ``texts`` (what
    the model reads: training texts, evaluation prompts) into ``data_report["unknown_tokens"]``;
    a DataError above ``data.max_unknown_fraction``, a warning for any below it."""
    counts = {}
    for split, xs in texts.items():
        n, total, chars = unknown_tokens(tokenizer, xs)
        counts[split] = {"unknown": n, "tokens": total,
                         "characters": dict(chars.most_common(10))}
    data_report["unknown_tokens"] = counts
    limit = recipe.data.max_unknown_fraction
    for split, c in counts.items():
        if not c["unknown"]:
            continue
        share = c["unknown"] / max(c["tokens"], 1)
        what = (f"{split}: {c['unknown']} of {c['tokens']} tokens ({share:.2%}) are the tokenizer's unknown token "
                f"(the model cannot see that text); most common: "
                f"{', '.join(f'{ch!r} {k}' for ch, k in c['characters'].items())}")
        if share > limit:
            raise DataError(f"{what}; data.max_unknown_fraction is {limit:g}: use a tokenizer that covers these "
                            "characters (without student.pretrain a tiny student's is trained on the training "
                            "texts), or replace them in the data")
        warn(what)


def too_long_fix(recipe: Recipe, max_length: int) -> str:
    """What to change when a sequence exceeds ``max_length``: data.max_length, unless the cap is
    the student's own position limit (then raising data.max_length changes nothing)."""
    if max_length < recipe.data.max_length:
        return (f"max_length={max_length} is the student's position limit (its max_position_embeddings; "
                f"data.max_length is {recipe.data.max_length}); shorten the examples, use a student with more "
                "positions (student.tiny.max_positions for a tiny one), or set data.on_too_long: skip")
    return "raise data.max_length, or set data.on_too_long: skip"


def drop_too_long(
    recipe: Recipe, train: list[Record], template: PromptTemplate, tokenizer: Any, is_encoder_decoder: bool,
    max_length: int, data_report: dict[str, Any], warn: Callable[[str], None],
    encoded: dict[str, Encoded] | None = None,
) -> list[Record]:
    """``data.on_too_long`` for training examples, measured in the student's tokens (from
    ``encoded``, the causal encodings by sample_id, when the caller has them)."""
    if encoded is not None:
        lengths = {r.sample_id: len(encoded[r.sample_id].input_ids) for r in train}
    else:
        lengths = token_lengths(train, template, tokenizer, is_encoder_decoder)
    long = [r for r in train if lengths[r.sample_id] > max_length]
    if not long:
        return train
    where = [r.meta.get("where") or r.sample_id for r in long]
    if recipe.data.on_too_long == "error":
        r = long[0]
        raise DataError(
            f"{where[0]}: sample {r.sample_id}: sequence of {lengths[r.sample_id]} tokens exceeds "
            f"max_length={max_length} ({len(long)} training examples do; {too_long_fix(recipe, max_length)})"
        )
    warn(f"data.on_too_long: skipped {len(long)} training examples longer than {max_length} tokens")
    data_report["skipped_too_long"] = {
        "count": len(long), "max_length": max_length, "sample_ids": [r.sample_id for r in long],
        "rows": [{"sample_id": r.sample_id, "where": w, "tokens": lengths[r.sample_id]} for r, w in zip(long, where)],
    }
    drop = {r.sample_id for r in long}
    return [r for r in train if r.sample_id not in drop]


def fit_eval_prompts(
    recipe: Recipe, split: str, recs: list[Record], template: PromptTemplate, tokenizer: Any, max_length: int,
    data_report: dict[str, Any], warn: Callable[[str], None],
) -> list[Record]:
    """``data.on_too_long`` for evaluation prompts (a prompt longer than max_length tokens)."""
    prompts = [template.prompt(r) for r in recs]
    ids = tokenizer(prompts, add_special_tokens=False)["input_ids"] if prompts else []
    long = [(r, len(x) + 1) for r, x in zip(recs, ids) if len(x) + 1 > max_length]
    if not long:
        return recs
    r, n = long[0]
    where = r.meta.get("where") or r.sample_id
    if recipe.data.on_too_long == "error":
        raise DataError(
            f"{where}: sample {r.sample_id} ({split}): prompt of {n} tokens exceeds max_length={max_length} "
            f"({len(long)} {split} prompts do; {too_long_fix(recipe, max_length)})"
        )
    warn(f"data.on_too_long: {len(long)} {split} prompts longer than {max_length} tokens are not evaluated")
    data_report.setdefault("skipped_too_long_eval", {})[split] = {
        "count": len(long), "max_length": max_length,
        "rows": [{"sample_id": x.sample_id, "where": x.meta.get("where") or x.sample_id, "tokens": k} for x, k in long],
    }
    drop = {x.sample_id for x, _ in long}
    return [x for x in recs if x.sample_id not in drop]
