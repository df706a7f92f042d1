"""Data sources (registry kind ``source``): each returns ``{split: [Record, ...]}``.

* ``arith`` — the built-in offline data set (kpod.data.synthetic).
* ``local`` — JSON (a list of objects) or JSONL files with a field mapping.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from kpod.data.records import DataError, Record, check_unique_ids
from kpod.data.steps import split_steps
from kpod.data.synthetic import generate_splits
from kpod.registry import DATA_SOURCES


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


@DATA_SOURCES
class Arith:
    """Seeded multi-step arithmetic word problems with teacher-like, filler-laden rationales."""

    name: ClassVar[str] = "arith"

    class Params(_Strict):
        n_train: int = Field(6000, ge=1)
        n_validation: int = Field(200, ge=0)
        n_test: int = Field(500, ge=0)
        n_ood: int = Field(300, ge=0)
        min_steps: int = Field(2, ge=1)
        max_steps: int = Field(4, ge=1)
        ood_min_steps: int = Field(5, ge=1)
        ood_max_steps: int = Field(6, ge=1)
        max_value: int = Field(60, ge=10, description="largest intermediate value")
        max_operand: int = Field(12, ge=2, description="largest number added or taken away")
        filler_prob: float = Field(0.5, ge=0.0, le=1.0, description="share of steps with filler")
        seed: int = Field(1234, description="data seed (independent of the training seed)")

        @model_validator(mode="after")
        def _ranges(self) -> Arith.Params:
            if self.min_steps > self.max_steps:
                raise ValueError("min_steps must be <= max_steps")
            if self.ood_min_steps > self.ood_max_steps:
                raise ValueError("ood_min_steps must be <= ood_max_steps")
            return self

    def __init__(self, params: Params | None = None) -> None:
        self.params = params or self.Params()

    def load(self, step_mode: str = "default") -> dict[str, list[Record]]:
        p = self.params
        splits = generate_splits(
            seed=p.seed,
            sizes={"train": p.n_train, "validation": p.n_validation, "test": p.n_test, "ood": p.n_ood},
            min_steps=p.min_steps,
            max_steps=p.max_steps,
            ood_min_steps=p.ood_min_steps,
            ood_max_steps=p.ood_max_steps,
            max_value=p.max_value,
            max_operand=p.max_operand,
            filler_prob=p.filler_prob,
        )
        if step_mode != "default":  # re-split with the requested rule; keep the side data
            splits = {
                k: [_resplit(r, step_mode) for r in v] for k, v in splits.items()
            }
        return splits


def _resplit(r: Record, mode: str) -> Record:
    rationale, steps = split_steps(r.rationale, mode)
    return Record(r.sample_id, r.question, rationale, steps, r.answer, r.meta)


class FieldMap(_Strict):
    id: str | None = Field(None, description="id field; default: '<prefix>/<split>/<line>'")
    question: str = "question"
    rationale: str | None = Field("rationale", description="null: no rationale (eval splits)")
    answer: str = "answer"


@DATA_SOURCES
class Local:
    """Local JSON (list of objects) or JSONL files, one per split, with a field mapping."""

    name: ClassVar[str] = "local"

    class Params(_Strict):
        files: dict[str, str] = Field(..., description="split name → path (.json or .jsonl)")
        fields: FieldMap = FieldMap()
        id_prefix: str | None = Field(None, description="default: the file stem")

        @model_validator(mode="after")
        def _has_train(self) -> Local.Params:
            if not self.files:
                raise ValueError("files: name at least one split")
            return self

    def __init__(self, params: Params) -> None:
        self.params = params

    def load(self, step_mode: str = "default") -> dict[str, list[Record]]:
        out: dict[str, list[Record]] = {}
        for split, path in self.params.files.items():
            rows = read_rows(Path(path))
            prefix = self.params.id_prefix or Path(path).stem
            recs = [
                row_to_record(row, where, self.params.fields, f"{prefix}/{split}/{i:05d}", step_mode)
                for i, (where, row) in enumerate(rows)
            ]
            check_unique_ids(recs, path)
            out[split] = recs
        return out


def read_rows(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """Rows of a .json list or a .jsonl file, each with its ``file:line`` (or ``file[index]``)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: no such data file") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 ({e.reason} at byte {e.start})") from None
    rows: list[tuple[str, dict[str, Any]]] = []
    if path.suffix == ".jsonl":
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{n}: invalid JSON ({e.msg})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{n}: expected a JSON object, got {type(obj).__name__}")
            rows.append((f"{path}:{n}", obj))
        return rows
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of objects (or use .jsonl)")
    for i, obj in enumerate(data):
        if not isinstance(obj, dict):
            raise DataError(f"{path}[{i}]: expected a JSON object, got {type(obj).__name__}")
        rows.append((f"{path}[{i}]", obj))
    return rows


def row_to_record(
    row: dict[str, Any], where: str, fields: FieldMap, default_id: str, step_mode: str
) -> Record:
    def get(key: str) -> Any:
        if key not in row:
            raise DataError(f"{where}: missing field {key!r} (have: {', '.join(sorted(row))})")
        return row[key]

    question = get(fields.question)
    answer = get(fields.answer)
    if not isinstance(question, str) or not question.strip():
        raise DataError(f"{where}: field {fields.question!r} must be a non-empty string")
    if isinstance(answer, (int, float)):
        answer = str(answer)
    if not isinstance(answer, str) or not answer.strip():
        raise DataError(f"{where}: field {fields.answer!r} must be a non-empty string or number")
    rationale_text = ""
    if fields.rationale is not None and fields.rationale in row:
        value = row[fields.rationale]
        if isinstance(value, list):  # several rationales: the first (issue 6 adds filtering)
            value = value[0] if value else ""
        if not isinstance(value, str):
            raise DataError(f"{where}: field {fields.rationale!r} must be a string or list of strings")
        rationale_text = value
    rationale, steps = split_steps(rationale_text, step_mode)
    sid = default_id
    if fields.id is not None:
        raw_id = get(fields.id)
        sid = str(raw_id)
    return Record(sid, question.strip(), rationale, steps, answer.strip(), {"where": where})
