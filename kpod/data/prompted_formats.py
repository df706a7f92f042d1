"""Data formats of the prompted baselines (registry kind ``format``, recipe field ``data.format``):
distilling step-by-step (``dsbs``), Specialized KD (``specialized_kd``) and SCOTT (``scott``).

Each expands the training split with the pure functions of :mod:`kpod.data.formats` and gives the
evaluation splits the prompt the method evaluates with (same sample_ids, so predictions keep
their ids): DSbS the label task's ``predict: `` prefix and no trigger, SCOTT ``[factual] ``,
Specialized KD the plain zero-shot CoT prompt. docs/baselines.md §4, §7, §8.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from kpod.data.format_base import DataFormat
from kpod.data.formats import (
    DSBS_PREFIXES,
    SCOTT_PREFIXES,
    SKD_FORMATS,
    answer_edited_rationale,
    counterfactual_record,
    dsbs_tasks,
    factual_record,
    perturb_answer,
    specialized_kd_formats,
    teacher_counterfactual_records,
    with_prefix,
)
from kpod.data.records import DataError, Record
from kpod.registry import DATA_FORMATS


def _counts(splits: dict[str, list[Record]]) -> dict[str, int]:
    return {s: len(v) for s, v in splits.items()}


@DATA_FORMATS("dsbs")
class Dsbs(DataFormat):
    """Distilling step-by-step: a label task and a rationale task per question, task prefixes."""

    name: ClassVar[str] = "dsbs"

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        label_prefix: str = Field(DSBS_PREFIXES["label"], description="prefix of the label task (and of evaluation)")
        rationale_prefix: str = Field(DSBS_PREFIXES["rationale"], description="prefix of the rationale task")

    params: Params

    def expand(self, splits: dict[str, list[Record]], seed: int) -> dict[str, list[Record]]:
        p = self.params
        if p.label_prefix == p.rationale_prefix:
            raise ValueError("data.format.params: label_prefix and rationale_prefix must differ (they name the task)")
        prefixes = {"label": p.label_prefix, "rationale": p.rationale_prefix}
        out = {s: [with_prefix(r, p.label_prefix, trigger="") for r in recs] for s, recs in splits.items() if s != "train"}
        if "train" in splits:
            out["train"] = [t for r in splits["train"] for t in dsbs_tasks(r, prefixes)]
        self.report = {"name": self.name, "records_in": _counts(splits), "records": _counts(out),
                       "tasks": {"label": p.label_prefix, "rationale": p.rationale_prefix}, "evaluated_task": "label"}
        return out


@DATA_FORMATS("specialized_kd")
class SpecializedKd(DataFormat):
    """Specialized KD (Fu et al. 2023): in-context / zero-shot × CoT / answer-only, mixed by ratio."""

    name: ClassVar[str] = "specialized_kd"

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        ratio: dict[str, float] | None = Field(
            None, description=f"share of each format's records kept, in [0, 1] ({', '.join(SKD_FORMATS)}); "
                              "null: all four formats whole (the release's union); a format left out is not used")
        n_demos: int = Field(4, ge=1, description="demonstrations of the in-context formats (release: 4)")
        match: Literal["sample", "distribution"] = Field(
            "sample", description="sample: NLL on the teacher's samples (the release's default); distribution: "
                                  "the CoT formats match the teacher's stored token distributions (loss: kd with "
                                  "teacher_store), the answer-only formats keep the NLL (docs/baselines.md §7)")

        @field_validator("ratio")
        @classmethod
        def _known_formats(cls, v: dict[str, float] | None) -> dict[str, float] | None:
            if v is None:
                return v
            unknown = sorted(set(v) - set(SKD_FORMATS))
            if unknown:
                raise ValueError(f"unknown format(s) {unknown}; the formats are {list(SKD_FORMATS)}")
            bad = {k: x for k, x in v.items() if not 0.0 <= x <= 1.0}
            if bad:
                raise ValueError(f"shares must be in [0, 1], got {bad}")
            return v

    params: Params

    def loss_problem(self, loss: Any) -> str | None:
        if self.params.match == "distribution" and getattr(loss.params, "teacher_store", None) is None:
            return ("data.format.params.match: distribution matches the teacher's stored distributions: set "
                    "loss.name: kd with loss.params.teacher_store (kpod rescore writes one)")
        return None

    def expand(self, splits: dict[str, list[Record]], seed: int) -> dict[str, list[Record]]:
        p = self.params
        out = {s: recs for s, recs in splits.items() if s != "train"}
        if "train" in splits:
            out["train"] = specialized_kd_formats(splits["train"], p.ratio, seed, p.n_demos)
        by_format: dict[str, int] = {f: 0 for f in SKD_FORMATS}
        for r in out.get("train", []):
            by_format[str(r.meta["format"])] += 1
        self.report = {"name": self.name, "records_in": _counts(splits), "records": _counts(out),
                       "train_by_format": by_format, "ratio": p.ratio, "evaluated_format": "zero_shot_cot"}
        return out


@DATA_FORMATS("scott")
class Scott(DataFormat):
    """SCOTT's student data: factual examples plus counterfactual ones (perturbed answer, its
    rationale given as input, only the answer learned)."""

    name: ClassVar[str] = "scott"

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        counterfactual: Literal["answer_edit", "teacher"] = Field(
            "answer_edit", description="where counterfactual rationales come from: answer_edit (the gold "
                                       "rationale with its last statement of the answer replaced; kpod's offline "
                                       "stand-in) or teacher (the split counterfactual_split, written by kpod "
                                       "teach with teacher.hf.contrastive: SCOTT's contrastively decoded "
                                       "rationales of the perturbed answers)")
        counterfactual_split: str = Field(
            "train_counterfactual", description="counterfactual: teacher — the data.source split holding kpod "
                                                "teach's <split>_counterfactual.json (only read here, never "
                                                "trained or evaluated as it is)")
        choices: list[str] | None = Field(
            None, description="answer_edit: answer choices of a multiple-choice source (e.g. [A, B, C, D, E]): the "
                              "perturbed answer is another choice; null: numeric (moved by a few units) or yes/no "
                              "answers")

    params: Params

    def expand(self, splits: dict[str, list[Record]], seed: int) -> dict[str, list[Record]]:
        prefix = SCOTT_PREFIXES["factual"]
        teacher = self.params.counterfactual == "teacher"
        cf_split = self.params.counterfactual_split if teacher else None
        out = {s: [with_prefix(r, prefix) for r in recs] for s, recs in splits.items() if s not in ("train", cf_split)}
        extra: dict[str, Any] = {}
        if "train" in splits:
            out["train"], extra = self._teacher(splits) if teacher else self._answer_edit(splits["train"], seed)
        self.report = {
            "name": self.name, "records_in": _counts(splits), "records": _counts(out),
            "counterfactual": self.params.counterfactual,
            "counterfactuals": sum(r.meta.get("task") == "counterfactual" for r in out.get("train", [])),
            **extra,
        }
        return out

    def _answer_edit(self, records: list[Record], seed: int) -> tuple[list[Record], dict[str, Any]]:
        train: list[Record] = []
        no_answer_in_rationale: list[str] = []
        for r in records:
            train.append(factual_record(r))
            wrong = perturb_answer(r.answer, seed, r.sample_id, self.params.choices)
            edited = answer_edited_rationale(r, wrong)
            if edited is None:  # the rationale never states the answer: nothing to edit (counted)
                no_answer_in_rationale.append(r.sample_id)
                continue
            train.append(counterfactual_record(r, edited[0], edited[1], wrong))
        return train, {"no_counterfactual": {"count": len(no_answer_in_rationale),
                                             "reason": "rationale never states the answer",
                                             "sample_ids": no_answer_in_rationale}}

    def _teacher(self, splits: dict[str, list[Record]]) -> tuple[list[Record], dict[str, Any]]:
        name = self.params.counterfactual_split
        if name not in splits:
            raise DataError(
                f"data.format.params.counterfactual_split: data.source has no split {name!r}; add kpod teach's "
                f"train_counterfactual.json to data.source.params.files as {name}"
            )
        train, missing, unused = teacher_counterfactual_records(splits["train"], splits[name])
        if len(missing) == len({r.question_id for r in splits["train"]}):
            raise DataError(
                f"data.format (scott): no training question has a counterfactual in split {name!r} "
                f"({len(splits[name])} rows); are they of the same teacher run, and does data.source keep them "
                "(data.source.params.rationales: all — the rationales state no answer of their own)?"
            )
        return train, {"counterfactual_split": name,
                       "no_counterfactual": {"count": len(missing), "reason": f"no row in split {name!r} (the "
                                             "teacher's reply was empty, or the source dropped it)",
                                             "sample_ids": missing},
                       "unused_counterfactuals": {"count": len(unused), "question_ids": unused}}
