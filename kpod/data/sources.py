"""Data sources (registry kind ``source``): each returns ``{split: [Record, ...]}``.

* ``arith`` — the built-in offline data set (kpod.data.synthetic).
* ``local`` — JSON (a list of objects) or JSONL files with a field mapping.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from kpod.data import bounded_json
from kpod.data.arith_rationales import with_rationales
from kpod.data.records import BadRowError, BadRows, DataError, Record, check_unique_ids
from kpod.data.source_base import DataSource
from kpod.data.steps import split_steps
from kpod.data.synthetic import generate_splits
from kpod.registry import DATA_SOURCES


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


@DATA_SOURCES
class Arith(DataSource):
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
        rationales_per_question: int = Field(
            1, ge=1, description="train split only: rationales per question (<id>#0 the original, <id>#1.. synthetic "
            "rewrites, sharing question_id <id>; kpod/data/arith_rationales.py); 1: one record <id> per question"
        )
        wrong_rationale_rate: float = Field(
            0.0, ge=0.0, le=1.0, description="share of the extra rationales with a slip that makes their answer wrong"
        )
        teacher_rationales: str | None = Field(
            None, description="train split only: a `kpod teach` output (OUT/train.json) whose rationales replace the "
            "generator's, matched by sample_id; questions without a kept rationale are dropped and counted "
            "(kpod/data/teacher_rationales.py)"
        )

        @model_validator(mode="after")
        def _ranges(self) -> Arith.Params:
            if self.min_steps > self.max_steps:
                raise ValueError("min_steps must be <= max_steps")
            if self.ood_min_steps > self.ood_max_steps:
                raise ValueError("ood_min_steps must be <= ood_max_steps")
            if self.teacher_rationales is not None and self.rationales_per_question > 1:
                raise ValueError("teacher_rationales: the teacher's rationales replace the generator's; "
                                 "set rationales_per_question: 1 (kpod teach's samples give several)")
            return self

    params: Params

    def load(self, step_mode: str = "default", faults: BadRows | None = None) -> dict[str, list[Record]]:
        """Generated rows cannot be malformed; ``faults`` is accepted for a uniform interface."""
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
        if p.rationales_per_question > 1:
            splits["train"] = with_rationales(splits["train"], p.rationales_per_question, p.seed, p.filler_prob,
                                              p.wrong_rationale_rate)
        if step_mode != "default":  # re-split with the requested rule; keep the side data
            splits = {
                k: [_resplit(r, step_mode) for r in v] for k, v in splits.items()
            }
        if p.teacher_rationales is not None:
            from kpod.data.teacher_rationales import with_teacher_rationales

            rows = iter_rows(Path(p.teacher_rationales))
            splits["train"], counts = with_teacher_rationales(splits["train"], rows, step_mode)
            self.report = {"source": self.name, "teacher_rationales": {"file": p.teacher_rationales, **counts}}
        return splits


def _resplit(r: Record, mode: str) -> Record:
    rationale, steps = split_steps(r.rationale, mode)
    return Record(r.sample_id, r.question, rationale, steps, r.answer, r.meta, r.question_id)


class FieldMap(_Strict):
    id: str | None = Field(None, description="id field; default: '<prefix>/<split>/<line>'")
    question: str = "question"
    rationale: str | None = Field("rationale", description="null: no rationale (eval splits)")
    answer: str = "answer"
    question_id: str = Field(
        "question_id", description="optional field: rows sharing it are one question (several rationales); "
        "absent: each row is its own question"
    )


@DATA_SOURCES
class Local(DataSource):
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

    params: Params

    def load(self, step_mode: str = "default", faults: BadRows | None = None) -> dict[str, list[Record]]:
        """Default ids are ``<prefix>/<split>/<row>``, the row counted over every row of the
        file (bad ones included), so skipping a bad row never shifts another row's id."""
        faults = faults or BadRows()
        out: dict[str, list[Record]] = {}
        counts: dict[str, dict[str, Any]] = {}
        for split, path in self.params.files.items():
            before = len(faults.rows)
            rows = iter_rows(Path(path), faults)
            prefix = self.params.id_prefix or Path(path).stem
            recs = []
            for i, where, row in rows:
                try:
                    recs.append(row_to_record(row, where, self.params.fields, f"{prefix}/{split}/{i:05d}", step_mode))
                except BadRowError as e:
                    faults.handle(e)
            check_unique_ids(recs, path)
            out[split] = recs
            counts[split] = {"file": path, "rows": len(recs) + len(faults.rows) - before}  # every row, bad ones too
        self.report = {"source": self.name, "files": counts}
        return out


def read_rows(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """Rows of a .json list or a .jsonl file, each with its ``file:line``; any bad row is an error."""
    return [(where, row) for _, where, row in iter_rows(path)]


def iter_rows(path: Path, faults: BadRows | None = None) -> Iterator[tuple[int, str, dict[str, Any]]]:
    """``(row number, "file:line", row)`` for each row of a .jsonl file or .json list, in order.

    The row number counts every non-blank line (JSONL) or list item (JSON), bad ones included.
    JSONL: a line that is not UTF-8, not JSON or not an object is a bad row, decided by
    ``faults`` (default: an error). JSON: the file is parsed whole, so bytes that are not UTF-8
    or a syntax error stop loading (naming the line); an item that is not an object is a bad row.
    """
    faults = faults or BadRows()
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: no such data file") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read the data file ({e.strerror})") from None
    if path.suffix.lower() == ".jsonl":  # upper.JSONL is JSON lines too
        number = 0
        for n, raw in enumerate(data.split(b"\n"), 1):
            if not raw.strip():
                continue
            where, number = f"{path}:{n}", number + 1
            try:
                obj = bounded_json.loads(raw.decode("utf-8"))
                if not isinstance(obj, dict):
                    raise BadRowError(where, "not_an_object", f"expected a JSON object, got {type(obj).__name__}")
            except UnicodeDecodeError as e:
                faults.handle(BadRowError(where, "not_utf8", f"not UTF-8 ({e.reason} at byte {e.start + 1} of the line)"))
                continue
            except json.JSONDecodeError as e:
                faults.handle(BadRowError(where, "invalid_json", f"invalid JSON ({e.msg}, column {e.colno})"))
                continue
            except bounded_json.JsonLimitError as e:
                faults.handle(BadRowError(where, "json_limit", f"refused: {e}"))
                continue
            except BadRowError as e:
                faults.handle(e)
                continue
            yield number - 1, where, obj
        return
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(
            f"{path}:{line}: not UTF-8 ({e.reason} at byte {e.start}); re-encode the file as UTF-8 "
            "(a .json list is read whole; in a .jsonl file a bad line can be skipped)"
        ) from None
    for i, (line, obj) in enumerate(_json_list(text, path)):
        where = f"{path}:{line} (item {i})"
        if not isinstance(obj, dict):
            faults.handle(BadRowError(where, "not_an_object", f"expected a JSON object, got {type(obj).__name__}"))
            continue
        yield i, where, obj


_WS = re.compile(r"[ \t\n\r]*")


def _json_list(text: str, path: Path) -> list[tuple[int, Any]]:
    """The items of a JSON list, each with the line it starts on."""
    dec = bounded_json.decoder()

    def invalid(e: json.JSONDecodeError) -> DataError:
        return DataError(f"{path}:{e.lineno}: invalid JSON ({e.msg}, column {e.colno})")

    def too_large(e: bounded_json.JsonLimitError, at: int) -> DataError:  # the list cannot be read around it
        return DataError(f"{path}:{text.count(chr(10), 0, at) + 1}: refused: {e} (a .json list is read whole)")

    pos = _WS.match(text).end()  # type: ignore[union-attr]
    if not text.startswith("[", pos):
        try:
            bounded_json.loads(text)
        except json.JSONDecodeError as e:
            raise invalid(e) from None
        except bounded_json.JsonLimitError as e:
            raise too_large(e, pos) from None
        raise DataError(f"{path}: expected a JSON list of objects (or use .jsonl)")
    items: list[tuple[int, Any]] = []
    line, counted = 1, 0
    pos = _WS.match(text, pos + 1).end()  # type: ignore[union-attr]
    more = not text.startswith("]", pos)  # "[]" has no items
    while more:
        try:
            obj, end = bounded_json.raw_decode(dec, text, pos)
        except json.JSONDecodeError as e:
            raise invalid(e) from None
        except bounded_json.JsonLimitError as e:
            raise too_large(e, pos) from None
        line += text.count("\n", counted, pos)
        counted = pos
        items.append((line, obj))
        pos = _WS.match(text, end).end()  # type: ignore[union-attr]
        more = text.startswith(",", pos)
        if more:
            pos = _WS.match(text, pos + 1).end()  # type: ignore[union-attr]
        elif not text.startswith("]", pos):
            raise invalid(json.JSONDecodeError("Expecting ',' or ']'", text, pos))
    rest = _WS.match(text, pos + 1).end()  # type: ignore[union-attr]
    if rest != len(text):
        raise invalid(json.JSONDecodeError("Extra data after the list", text, rest))
    return items


def row_to_record(
    row: dict[str, Any], where: str, fields: FieldMap, default_id: str, step_mode: str
) -> Record:
    """One row as a Record; a bad row raises :class:`BadRowError` (a DataError naming ``where``)."""

    def get(key: str) -> Any:
        if key not in row:
            raise BadRowError(where, "missing_field", f"missing field {key!r} (have: {', '.join(sorted(row))})")
        return row[key]

    question = get(fields.question)
    answer = get(fields.answer)
    if not isinstance(question, str) or not question.strip():
        raise BadRowError(where, "empty_field", f"field {fields.question!r} must be a non-empty string")
    if isinstance(answer, (int, float)) and not isinstance(answer, bool):
        answer = str(answer)
    if not isinstance(answer, str) or not answer.strip():
        raise BadRowError(where, "empty_field", f"field {fields.answer!r} must be a non-empty string or number")
    rationale_text = ""
    if fields.rationale is not None and fields.rationale in row:
        value = row[fields.rationale]
        if isinstance(value, list):  # several rationales: the first (the benchmark sources keep all or the correct ones)
            value = value[0] if value else ""
        if not isinstance(value, str):
            raise BadRowError(where, "wrong_type", f"field {fields.rationale!r} must be a string or list of strings")
        rationale_text = value
    rationale, steps = split_steps(rationale_text, step_mode)
    sid = default_id
    if fields.id is not None:
        raw_id = get(fields.id)
        if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)) or not str(raw_id).strip():
            raise BadRowError(where, "wrong_type", f"field {fields.id!r} must be a non-empty string or integer, got {raw_id!r}")
        sid = str(raw_id)
    qid = row.get(fields.question_id, "")
    if isinstance(qid, bool) or not isinstance(qid, (str, int)):
        raise BadRowError(where, "wrong_type", f"field {fields.question_id!r} must be a string or integer, got {qid!r}")
    return Record(sid, question.strip(), rationale, steps, answer.strip(), {"where": where}, str(qid).strip())
