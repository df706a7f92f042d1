"""Rationale tokens in the student's tokenization, with character offsets and step ends.

Shared by the weighting strategies: they score the student's tokens of the rationale and hand
back weights as character spans relative to ``Record.rationale``.
"""

from __future__ import annotations

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


def rationale_tokens(record: Record, template: PromptTemplate, tokenizer: Any) -> RationaleTokens:
    ser = template.serialize(record)
    enc = tokenizer(ser.text, return_offsets_mapping=True, add_special_tokens=False)
    return _from_encoding(record, ser, list(enc["input_ids"]), list(enc["offset_mapping"]))


def rationale_tokens_many(records: list[Record], template: PromptTemplate, tokenizer: Any) -> list[RationaleTokens]:
    """:func:`rationale_tokens` for many records with one batched tokenizer call (same result)."""
    sers = [template.serialize(r) for r in records]
    if not sers:
        return []
    enc = tokenizer([s.text for s in sers], return_offsets_mapping=True, add_special_tokens=False)
    return [
        _from_encoding(r, ser, list(ids), list(offs))
        for r, ser, ids, offs in zip(records, sers, enc["input_ids"], enc["offset_mapping"])
    ]


def _from_encoding(record: Record, ser: Any, ids: list[int], offsets: list[Any]) -> RationaleTokens:
    anchors = anchors_from_offsets(ser.text, offsets)
    rs, ans = ser.rationale_start, ser.answer_span[0]
    prefix = [i for i, a in zip(ids, anchors) if a < rs]
    idx = [k for k, a in enumerate(anchors) if rs <= a < ans]
    rat_ids = [ids[k] for k in idx]
    n_rat = len(record.rationale)
    # whitespace-only tokens anchor at the next visible character: their span is empty
    spans = [
        (int(anchors[k]) - rs, min(max(int(offsets[k][1]), int(anchors[k])) - rs, n_rat)) for k in idx
    ]
    rat_anchors = np.asarray([anchors[k] for k in idx], dtype=np.int64)
    step_ends = [int(np.searchsorted(rat_anchors, e, side="left")) for _, e in ser.steps]
    return RationaleTokens(record.sample_id, prefix, rat_ids, spans, step_ends, record.answer)
