"""The first phase of every command that starts from a recipe (``run``, ``weights``, ``plan``):
the data, the prompt template, the student and its tokenizer, and the training set measured in
the student's tokens."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kpod.data.load import check_unknown_tokens, drop_too_long, load_data, template_from
from kpod.data.records import Record
from kpod.data.template import PromptTemplate, Serialized
from kpod.data.tokenize import Encoded, encode_causal_many
from kpod.engine.distributed import same_on_every_rank
from kpod.models.student import Student, load_student, portable_tokenizer
from kpod.progress import Reporter
from kpod.recipe_types import Recipe
from kpod.runs import atomic_save_dir
from kpod.timing import PhaseTimer


@dataclass
class Data:
    """The recipe's data as loaded and checked, and the prompt template."""

    splits: dict[str, list[Record]]
    report: dict[str, Any]  # source counts and bad rows (data.on_bad_row)
    template: PromptTemplate
    train_serialized: list[Serialized]  # the train split rendered by the template, in order


@dataclass
class Setup:
    """What the later phases start from."""

    splits: dict[str, list[Record]]  # every split as loaded and checked ("train" before data.on_too_long)
    data_report: dict[str, Any]  # source counts, bad rows, training examples skipped as too long
    template: PromptTemplate
    student: Student
    max_length: int  # data.max_length, capped at a causal student's positions
    train: list[Record]  # the training examples that fit max_length
    encoded: dict[str, Encoded] | None  # causal students: the training set tokenised once, by sample_id
    n_params: int  # the student's parameters as loaded (before any LoRA adapters)

    @property
    def tokenizer(self) -> Any:
        return self.student.tokenizer


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def max_length_for(recipe: Recipe, config: Any, is_encoder_decoder: bool) -> int:
    """``data.max_length``, capped at a causal student's position embeddings (``config``: its
    transformers config)."""
    positions = getattr(config, "max_position_embeddings", None)
    if positions and not is_encoder_decoder:
        return min(recipe.data.max_length, int(positions))
    return int(recipe.data.max_length)


def prepare(
    recipe: Recipe, reporter: Reporter, *, run_dir: Path | None = None, resume: bool = False,
    procs: Any = None, timer: PhaseTimer | None = None,
) -> Setup:
    """Seed, load and check the data, load (or build) the student, drop training examples longer
    than ``max_length``. With ``run_dir`` a tiny student's tokenizer is saved there (and, with
    ``resume``, the saved one is used: the exact tokenizer the checkpoint was trained with)."""
    seed_everything(recipe.seed)
    t0 = time.perf_counter()
    data = prepare_data(recipe, reporter.warn)
    splits, data_report, template, train_sers = data.splits, data.report, data.template, data.train_serialized
    train = splits["train"]
    if timer is not None:
        timer.add("data", time.perf_counter() - t0)

    t0 = time.perf_counter()
    student = _student(recipe, [s.text for s in train_sers], reporter, run_dir, resume, procs)
    max_length = max_length_for(recipe, student.model.config, student.is_encoder_decoder)
    # text the tokenizer cannot represent trains and evaluates on <unk>: counted, refused above the limit
    seen = {"train": [s.text for s in train_sers]}
    seen.update({k: [template.prompt(r) for r in v] for k, v in splits.items() if k != "train"})
    check_unknown_tokens(recipe, seen, student.tokenizer, data_report, reporter.warn)
    # before any phase runs the model on them: a multi-MB row must not reach weighting or difficulty
    # causal students: one tokenisation of the training set, for the length check and the collator
    encoded = _encode(student, train, train_sers)
    fitting = drop_too_long(recipe, train, template, student.tokenizer, student.is_encoder_decoder, max_length,
                            data_report, reporter.warn, encoded)
    if timer is not None:
        timer.add("student", time.perf_counter() - t0)  # student, tokenizer and the tokenised training set
    n_params = sum(p.numel() for p in student.model.parameters())
    return Setup(splits, data_report, template, student, max_length, fitting, encoded, n_params)


def prepare_data(recipe: Recipe, warn: Callable[[str], None]) -> Data:
    """Load and check the data (rows skipped under ``data.on_bad_row: skip`` are counted, listed
    in ``Data.report`` and passed to ``warn`` as one line), and render the training split with the recipe's template once: the tiny
    student's tokenizer is trained on those texts and the causal encodings come from them."""
    report: dict[str, Any] = {}
    splits = load_data(recipe, report, training=True)
    if report["bad_rows"]["count"]:
        bad = report["bad_rows"]
        warn(f"data.on_bad_row: skipped {bad['count']} bad rows "
                      f"({', '.join(f'{k} {v}' for k, v in bad['by_reason'].items())}); listed in summary.json")
    template = template_from(recipe)
    return Data(splits, report, template, [template.serialize(r) for r in splits["train"]])


def _encode(student: Student, train: list[Record], sers: list[Serialized]) -> dict[str, Encoded] | None:
    if student.is_encoder_decoder:
        return None
    return dict(zip((r.sample_id for r in train), encode_causal_many(student.tokenizer, sers)))


def _student(
    recipe: Recipe, train_texts: list[str], reporter: Reporter, run_dir: Path | None, resume: bool, procs: Any
) -> Student:
    if recipe.student.pretrain is not None:
        from kpod.cache import cache_root
        from kpod.models.pretrain import base_path

        where = base_path(recipe.student, cache_root())
        if not (where / "base.json").exists():
            reporter.info(f"pre-training the tiny student's base once ({recipe.student.pretrain.steps} steps); "
                          f"cached at {where}")
    student = load_student(recipe.student, train_texts=train_texts, seed=recipe.seed)
    if run_dir is not None and recipe.student.model.startswith("tiny:"):
        tok_dir = run_dir / "tokenizer"
        if resume and tok_dir.exists():  # the exact tokenizer the checkpoint was trained with
            from transformers import PreTrainedTokenizerFast

            student.tokenizer = PreTrainedTokenizerFast.from_pretrained(str(tok_dir))
        elif procs is None or procs.is_main_process:  # atomic: a kill must not leave a half-saved tokenizer
            portable = portable_tokenizer(student.tokenizer, student.is_encoder_decoder)
            atomic_save_dir(tok_dir, portable.save_pretrained)
        if procs is not None:
            same_on_every_rank(procs, "the tiny student's tokenizer", sorted(student.tokenizer.get_vocab().items()))
    return student
