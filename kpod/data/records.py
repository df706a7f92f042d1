"""The record every component exchanges: one question with one rationale, keyed by sample_id."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from kpod.cache import fingerprint

Span = tuple[int, int]
#: token significance weights as data: per sample_id, ``(char_start, char_end, weight)`` spans over
#: the record's rationale (what a weighting strategy returns and the collator maps onto tokens)
CharSpanWeights = dict[str, list[tuple[int, int, float]]]


@dataclass(frozen=True)
class Record:
    """One training/evaluation example.

    ``steps`` are ``(start, end)`` character spans into ``rationale`` (end exclusive).
    ``sample_id`` comes from the source (never from load order) and travels end to end.
    ``meta`` holds source-specific side data, e.g. the synthetic generator's
    ``keypoint_spans`` / ``filler_spans`` (character spans into ``rationale``).
    ``question_id`` groups the records of one question (e.g. several teacher rationales of it,
    ``train.group_by_question``); a source that gives none leaves it to default to ``sample_id``.
    """

    sample_id: str
    question: str
    rationale: str
    steps: tuple[Span, ...]
    answer: str
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    question_id: str = ""  # "" → sample_id (set in __post_init__)

    def __post_init__(self) -> None:
        if not self.question_id:
            object.__setattr__(self, "question_id", self.sample_id)

    @property
    def n_steps(self) -> int:
        return len(self.steps)

    def step_texts(self) -> list[str]:
        return [self.rationale[s:e] for s, e in self.steps]


#: ``meta`` keys through which a data format overrides the prompt template for one record
#: (kpod/data/template.py): ``trigger`` (str, "" for none) and ``demos`` (text before ``Q:``)
TEMPLATE_OVERRIDES = ("trigger", "demos")

#: ``meta`` key naming where a record's stored teacher distributions are (a top-k store's
#: sample_id, kpod/data/topk_store.py): absent → the record's own sample_id; None → it has none
#: (the kd loss trains that record on its CE alone). Specialized KD's formats set it.
TEACHER_KEY = "teacher_key"


def teacher_key(record: Record) -> str | None:
    """Where ``record``'s teacher distributions are stored (see :data:`TEACHER_KEY`)."""
    return record.meta[TEACHER_KEY] if TEACHER_KEY in record.meta else record.sample_id


def template_overrides(record: Record) -> dict[str, str]:
    """The record's template overrides (empty for a plain record); a non-string value is an error."""
    out = {}
    for key in TEMPLATE_OVERRIDES:
        if key in record.meta:
            value = record.meta[key]
            if not isinstance(value, str):
                raise DataError(f"sample {record.sample_id}: meta[{key!r}] must be a string, got {type(value).__name__}")
            out[key] = value
    return out


def records_digest(records: Iterable[Record]) -> str:
    """Fingerprint of the records' content (id, question, rationale, steps, answer, and template
    overrides when a record has any), in sample_id order: cache keys of everything computed from
    the data use it. Records without overrides fingerprint exactly as before overrides existed."""
    rows = []
    for r in sorted(records, key=lambda r: r.sample_id):
        row: list[object] = [r.sample_id, r.question, r.rationale, r.steps, r.answer]
        overrides = template_overrides(r)
        if overrides:
            row.append(overrides)
        rows.append(row)
    return fingerprint("records", rows)


class DataError(ValueError):
    """Bad input data; the message names the file and line (or the sample_id)."""


def check_unique_ids(records: list[Record], where: str) -> None:
    """Duplicate sample_ids are always an error (which row is meant is ambiguous); it names
    both rows by ``file:line`` where the records carry ``meta["where"]``."""
    seen: dict[str, int] = {}
    for i, r in enumerate(records):
        if r.sample_id in seen:
            first = records[seen[r.sample_id]]
            a, b = first.meta.get("where"), r.meta.get("where")
            rows = f"{a} and {b}" if a and b else f"rows {seen[r.sample_id] + 1} and {i + 1}"
            raise DataError(f"{where}: duplicate sample_id {r.sample_id!r} ({rows}); ids must be unique")
        seen[r.sample_id] = i


class BadRowError(DataError):
    """One bad input row: ``where`` is ``file:line``, ``reason`` a short key (``invalid_json``,
    ``not_utf8``, ``missing_field``, …), ``detail`` what is wrong in words."""

    def __init__(self, where: str, reason: str, detail: str) -> None:
        super().__init__(f"{where}: {detail}")
        self.where, self.reason, self.detail = where, reason, detail


class BadRows:
    """The recipe's ``data.on_bad_row`` policy for row-level faults.

    ``error``: the first bad row stops loading (its :class:`BadRowError`, with a hint).
    ``skip``: the row is left out and listed (file:line, reason) in :meth:`report`, which the
    run summary and ``kpod data`` show, so no row disappears without a count.
    """

    def __init__(self, policy: str = "error") -> None:
        if policy not in ("error", "skip"):
            raise ValueError(f"data.on_bad_row: {policy!r} is not 'error' or 'skip'")
        self.policy = policy
        self.rows: list[dict[str, str]] = []

    def handle(self, e: BadRowError) -> None:
        """Raise (policy ``error``) or record the skip (policy ``skip``)."""
        if self.policy == "error":
            raise DataError(f"{e} (or set data.on_bad_row: skip to skip such rows, counted in summary.json)") from None
        self.rows.append({"where": e.where, "reason": e.reason, "detail": e.detail})

    def report(self) -> dict[str, Any]:
        """Counts by reason and every skipped row, in file and line order."""
        by_reason: dict[str, int] = {}
        for r in self.rows:
            by_reason[r["reason"]] = by_reason.get(r["reason"], 0) + 1
        rows = sorted(self.rows, key=lambda r: _file_line(r["where"]))
        return {"policy": self.policy, "count": len(self.rows), "by_reason": by_reason, "rows": rows}


def _file_line(where: str) -> tuple[str, int]:
    m = re.match(r"(.*):(\d+)(?: \(item \d+\))?$", where)
    return (m.group(1), int(m.group(2))) if m else (where, 0)
