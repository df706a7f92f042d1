"""Rationale tokens in the student's tokenization, with character offsets and step ends.

Shared by the weighting strategies: they score the student's tokens of the rationale and hand
back weights as character spans relative to ``Record.rationale``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from kpod.data.records import Record
from kpod.data.template import PromptTemplate
from kpod.data.tokenize import anchors_from_offsets


@dataclass
class RationaleTokens:
    sample_id: str
    prefix_ids: list[int]  # tokens of "Q: {x} A: {trigger}"
    rat_ids: list[int]  # tokens of the rationale
    rat_spans: list[tuple[int, int]]  # per token: (anchor, end) relative to the rationale; empty for whitespace
    step_ends: list[int]  # exclusive token index where each step ends (in rat_ids)
    answer: str
    # token index (in rat_ids) where the rationale's last mention of the answer starts; None when
    # the rationale never states the answer or states it at its very first token
    answer_start: int | None = None


def rationale_tokens(record: Record, template: PromptTemplate, tokenizer: Any) -> RationaleTokens:
    ser = template.serialize(record)
    enc = tokenizer(ser.text, return_offsets_mapping=True, add_special_tokens=False)
    return _from_encoding(record, ser, list(enc["input_ids"]), list(enc["offset_mapping"]))


def rationale_tokens_many(
    records: list[Record], template: PromptTemplate, tokenizer: Any, chunk: int = 1024
) -> list[RationaleTokens]:
    """:func:`rationale_tokens` for many records, in batched tokenizer calls of ``chunk`` texts
    (same result)."""
    out: list[RationaleTokens] = []
    for start in range(0, len(records), chunk):
        part = records[start : start + chunk]
        sers = [template.serialize(r) for r in part]
        enc = tokenizer([s.text for s in sers], return_offsets_mapping=True, add_special_tokens=False)
        out += [
            _from_encoding(r, ser, list(ids), list(offs))
            for r, ser, ids, offs in zip(part, sers, enc["input_ids"], enc["offset_mapping"])
        ]
    return out


def _from_encoding(record: Record, ser: Any, ids: list[int], offsets: list[Any]) -> RationaleTokens:
    anchors = anchors_from_offsets(ser.text, offsets)
    ids_a = np.asarray(ids, dtype=np.int64)
    ends = np.asarray(offsets, dtype=np.int64).reshape(len(ids), 2)[:, 1]
    rs, ans = ser.rationale_start, ser.answer_span[0]
    idx = np.nonzero((anchors >= rs) & (anchors < ans))[0]
    rat_anchors = anchors[idx]
    # whitespace-only tokens anchor at the next visible character: their span is empty
    span_ends = np.minimum(np.maximum(ends[idx], rat_anchors) - rs, len(record.rationale))
    spans = list(zip((rat_anchors - rs).tolist(), span_ends.tolist()))
    step_ends = np.searchsorted(rat_anchors, [e for _, e in ser.steps], side="left").tolist()
    mention = last_mention(ser.text[rs:ans], record.answer)
    answer_start = None if mention is None else int(np.searchsorted(rat_anchors, rs + mention, side="left"))
    return RationaleTokens(
        record.sample_id, ids_a[anchors < rs].tolist(), ids_a[idx].tolist(), spans, step_ends, record.answer,
        answer_start if answer_start else None,
    )


def last_mention(text: str, answer: str) -> int | None:
    """Character offset of the last whole-word occurrence of ``answer`` in ``text`` (``25`` is
    not found inside ``125`` or ``2.5``), or None."""
    answer = answer.strip()
    if not answer:
        return None
    hits = [m.start() for m in re.finditer(rf"(?<![\w.]){re.escape(answer)}(?![\w]|\.\d)", text)]
    return hits[-1] if hits else None
