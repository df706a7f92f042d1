"""``precomputed``: token weights or masks imported from a JSONL file keyed by ``sample_id``.

An external keypoint finder (critical tokens found by rollouts as in CFT / cDPO, another
toolkit's scores, hand labels) plugs in without code: write one line per training record, either
as character spans of the rationale or as tokens of any tokenizer with their offsets::

    {"sample_id": "arith/train/00000", "spans": [[0, 12, 1.0], [12, 30, 0.2]]}
    {"sample_id": "arith/train/00001", "tokens": [{"text": "48", "offset": 9, "weight": 1.0}, ...]}

Offsets and spans are characters of the record's ``rationale`` (end exclusive); a token's
``text`` must be what the rationale holds at its offset (a file written against other data fails
at its first mismatch). Characters no span covers weigh ``default_weight``. A mask is weights 0/1.
The student's tokens take the weight at their anchor (their first visible character), so the file
works for any student tokenizer. Errors name ``file:line``; a training record without a line is
counted and refused; lines for sample_ids outside the training split are counted in the report.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from kpod.data.records import CharSpanWeights, DataError, Record
from kpod.registry import WEIGHTING
from kpod.weighting.base import WeightingContext, WeightingStrategy


@WEIGHTING
class Precomputed(WeightingStrategy):
    """Static: weights or masks imported from a JSONL file keyed by sample_id — character spans of
    the rationale or tokens of any tokenizer with offsets — so an external keypoint finder (CFT- or
    cDPO-style critical tokens, your own) plugs in without code (docs/method.md)."""

    name: ClassVar[str] = "precomputed"

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        path: str = Field(..., description="JSONL file: one {sample_id, spans | tokens} object per line")
        default_weight: float = Field(1.0, ge=0.0, description="weight of rationale characters no span covers")

    params: Params

    def compute(self, ctx: WeightingContext) -> CharSpanWeights | None:
        path = Path(self.params.path)
        if not path.is_file():
            raise DataError(f"weighting.params.path: {path} not found")
        by_id = {r.sample_id: r for r in ctx.records}
        out: CharSpanWeights = {}
        line_of: dict[str, int] = {}
        outside = 0
        with path.open(encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{path}:{n}"
                sid, spans = _parse_line(line, where)
                if sid in line_of:
                    raise DataError(f"{where}: sample_id {sid!r} repeats line {line_of[sid]}")
                line_of[sid] = n
                record = by_id.get(sid)
                if record is None:
                    outside += 1
                    continue
                out[sid] = _fill(_check_spans(spans, record, where), len(record.rationale), self.params.default_weight)
        missing = [sid for sid in by_id if sid not in out]
        if missing:
            raise DataError(
                f"{path}: {len(missing)} of {len(by_id)} training records have no line "
                f"(first: {', '.join(missing[:3])}); weights are matched by sample_id"
            )
        self.report = {"path": str(path), "records": len(out), "lines_outside_train": outside}
        return out


def _parse_line(line: str, where: str) -> tuple[str, list[tuple[Any, Any, Any, str | None]]]:
    """``(sample_id, [(start, end, weight, token text or None)])`` of one line."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: not JSON ({e.msg})") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("sample_id"), str):
        raise DataError(f"{where}: expected an object with a string sample_id")
    has_spans, has_tokens = "spans" in obj, "tokens" in obj
    if has_spans == has_tokens:
        raise DataError(f"{where}: give exactly one of 'spans' or 'tokens'")
    items = obj["spans"] if has_spans else obj["tokens"]
    if not isinstance(items, list):
        raise DataError(f"{where}: {'spans' if has_spans else 'tokens'} must be a list")
    parsed: list[tuple[Any, Any, Any, str | None]] = []
    for i, item in enumerate(items):
        if has_spans:
            if not (isinstance(item, list) and len(item) == 3):
                raise DataError(f"{where}: spans[{i}] must be [start, end, weight]")
            parsed.append((item[0], item[1], item[2], None))
        else:
            if not (isinstance(item, dict) and isinstance(item.get("text"), str) and "offset" in item and "weight" in item):
                raise DataError(f"{where}: tokens[{i}] must be {{text, offset, weight}}")
            off = item["offset"]
            end = off + len(item["text"]) if isinstance(off, int) else off
            parsed.append((off, end, item["weight"], item["text"]))
    return obj["sample_id"], parsed


def _check_spans(
    spans: list[tuple[Any, Any, Any, str | None]], record: Record, where: str
) -> list[tuple[int, int, float]]:
    n = len(record.rationale)
    out: list[tuple[int, int, float]] = []
    for s, e, w, text in spans:
        what = f"token {text!r} at offset {s}" if text is not None else f"span [{s}, {e}, {w}]"
        if not (isinstance(s, int) and isinstance(e, int) and 0 <= s <= e <= n):
            raise DataError(f"{where}: {what} is outside the rationale of {record.sample_id} ({n} characters)")
        if not isinstance(w, int | float) or isinstance(w, bool) or not math.isfinite(w) or w < 0:
            raise DataError(f"{where}: {what}: weight must be a finite number ≥ 0")
        if text is not None and record.rationale[s:e] != text:
            raise DataError(f"{where}: {what}: the rationale of {record.sample_id} has {record.rationale[s:e]!r} there")
        if s < e:
            out.append((s, e, float(w)))
    out.sort()
    for (_, e0, _), (s1, _, _) in zip(out, out[1:]):
        if s1 < e0:
            raise DataError(f"{where}: spans overlap at characters {s1}-{e0} of {record.sample_id}")
    return out


def _fill(spans: list[tuple[int, int, float]], length: int, default: float) -> list[tuple[int, int, float]]:
    """The spans plus ``default`` over the gaps (no gap spans when the default is 1, the collator's)."""
    if default == 1.0:
        return spans
    out, at = [], 0
    for s, e, w in spans:
        if s > at:
            out.append((at, s, default))
        out.append((s, e, w))
        at = e
    if at < length:
        out.append((at, length, default))
    return out
