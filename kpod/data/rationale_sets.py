"""Data formats for methods that train on several rationales per question (docs/baselines.md):

* ``mcc_kd`` — MCC-KD (Chen et al. 2023): a question's *correct* rationales, then ``k`` diverse
  ones by the n-gram Jaccard filter (:func:`kpod.data.formats.select_diverse`);
* ``scotd`` — SCoTD (Li et al. 2023): all of a question's sampled rationales (optionally only
  the correct ones).

The rationales of a question are the source's training records sharing a ``question_id`` (a
benchmark file with a list of teacher rationales, ``kpod teach`` with ``samples: N`` and
``rationales: all``, a local file with a ``question_id`` field, or ``arith`` with
``rationales_per_question``), in source order. Each kept rationale becomes ``<question_id>#r<i>``
(``i``: its index among the question's records) with ``Record.question_id`` = the question's id.
A rationale's own answer is ``meta["teacher_answer"]`` when the source set it, else what the
extractor (``extractor``) reads from the rationale text; the gold answer stays the target.
Only the train split is expanded; evaluation splits pass through unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from kpod.data.format_base import DataFormat
from kpod.data.formats import Sample, keep_all_samples, mcc_kd_records
from kpod.data.records import Record
from kpod.eval.answers import AnswerExtractor, ChoiceExtractor, NumericExtractor
from kpod.registry import DATA_FORMATS

_EXTRACTORS: dict[str, Callable[[], AnswerExtractor]] = {"numeric": NumericExtractor, "choice": ChoiceExtractor}


def questions(records: list[Record]) -> dict[str, list[Record]]:
    """The records of each question_id, in source order (questions in order of first record)."""
    out: dict[str, list[Record]] = {}
    for r in records:
        out.setdefault(r.question_id, []).append(r)
    return out


def teacher_answer(record: Record, extractor: AnswerExtractor) -> str:
    """What the rationale concludes: ``meta["teacher_answer"]`` if set, else extracted from it."""
    if "teacher_answer" in record.meta:
        return str(record.meta["teacher_answer"])
    return extractor.extract(record.rationale) or ""


def _samples(group: list[Record], extractor: AnswerExtractor) -> tuple[Record, list[Sample]]:
    """The question (a record with sample_id = question_id) and its rationales as samples."""
    first = group[0]
    base = replace(first, sample_id=first.question_id, meta={k: v for k, v in first.meta.items() if k != "teacher_answer"})
    return base, [Sample(r.rationale, r.steps, teacher_answer(r, extractor)) for r in group]


class _MultiParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    extractor: Literal["numeric", "choice"] = Field(
        "numeric", description="reads a rationale's answer when the source gave none (meta.teacher_answer)"
    )


class _MultiRationale(DataFormat):
    params: Any

    def expand(self, splits: dict[str, list[Record]], seed: int) -> dict[str, list[Record]]:
        extractor = _EXTRACTORS[self.params.extractor]()
        is_correct = extractor.is_correct
        train: list[Record] = []
        counts = {"questions": 0, "rationales_in": 0, "kept": 0, "dropped": 0, "questions_dropped": 0}
        for group in questions(splits.get("train", [])).values():
            base, samples = _samples(group, extractor)
            kept, dropped = self.select(base, samples, lambda a, g: is_correct(a, g))
            counts["questions"] += 1
            counts["rationales_in"] += len(samples)
            counts["kept"] += len(kept)
            counts["dropped"] += dropped
            counts["questions_dropped"] += not kept
            train += kept
        out = {**splits, "train": train} if "train" in splits else dict(splits)
        self.report = {"name": self.name, "params": self.params.model_dump(), "train": counts,
                       "records": {s: len(v) for s, v in out.items()}}
        return out

    def select(self, base: Record, samples: list[Sample], is_correct: Callable[[str, str], bool]) -> tuple[list[Record], int]:
        raise NotImplementedError


@DATA_FORMATS("mcc_kd")
class MccKdFormat(_MultiRationale):
    """MCC-KD: per question, the correct rationales, then ``k`` mutually dissimilar ones."""

    name: ClassVar[str] = "mcc_kd"

    class Params(_MultiParams):
        k: int = Field(2, ge=1, description="rationales kept per question (the release's diversity=2)")
        ngram: int = Field(2, ge=1, description="word n-grams of the Jaccard diversity filter")

    def select(self, base: Record, samples: list[Sample], is_correct: Callable[[str, str], bool]) -> tuple[list[Record], int]:
        return mcc_kd_records(base, samples, self.params.k, is_correct, self.params.ngram)


@DATA_FORMATS("scotd")
class ScotdFormat(_MultiRationale):
    """SCoTD: every sampled rationale of a question (``correct_only``: only the correct ones)."""

    name: ClassVar[str] = "scotd"

    class Params(_MultiParams):
        correct_only: bool = Field(False, description="drop rationales whose answer is not the gold one (SCoTD: keep all)")

    def select(self, base: Record, samples: list[Sample], is_correct: Callable[[str, str], bool]) -> tuple[list[Record], int]:
        return keep_all_samples(base, samples, is_correct if self.params.correct_only else None)
