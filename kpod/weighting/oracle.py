"""``oracle``: the keypoints the built-in data set knows, as weights.

The built-in ``arith`` source writes each record's calculations (numbers, operators, ``=``) as
``meta["keypoint_spans"]`` and its filler phrasing as ``meta["filler_spans"]`` (character spans
into the rationale). ``oracle`` gives keypoint characters weight 1 and filler characters
``filler_weight`` (other characters 1): the upper bound of what keypoint weighting can give on the
testbed. The side data is read from each record by its ``sample_id`` — never by position — and a
data set without it is an error naming the records that lack it.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from kpod.data.records import CharSpanWeights, DataError, Record
from kpod.registry import WEIGHTING
from kpod.weighting.base import WeightingContext, WeightingStrategy


def side_data_by_id(records: list[Record]) -> dict[str, tuple[list[Any], list[Any]]]:
    """``sample_id → (keypoint_spans, filler_spans)``; a DataError naming the count and the first
    records without side data (only the built-in ``arith`` source writes it)."""
    missing = [r.sample_id for r in records
               if r.meta.get("keypoint_spans") is None or r.meta.get("filler_spans") is None]
    if missing:
        raise DataError(
            f"weighting.name: oracle needs keypoint side data (meta['keypoint_spans'], meta['filler_spans'], "
            f"written by the built-in arith source); {len(missing)} of {len(records)} training records have "
            f"none (first: {', '.join(missing[:3])})"
        )
    return {r.sample_id: (list(r.meta["keypoint_spans"]), list(r.meta["filler_spans"])) for r in records}


@WEIGHTING
class Oracle(WeightingStrategy):
    """Static, built-in data only: the data set's own keypoints (``meta["keypoint_spans"]``) weigh 1,
    its filler (``meta["filler_spans"]``) ``filler_weight``, read by sample_id: the upper bound of
    keypoint weighting on the testbed. Data without that side data is an error."""

    name: ClassVar[str] = "oracle"

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        filler_weight: float = Field(0.1, ge=0.0, le=1.0, description="weight of filler characters (keypoints weigh 1)")

    params: Params

    def compute(self, ctx: WeightingContext) -> CharSpanWeights | None:
        side = side_data_by_id(ctx.records)
        out: CharSpanWeights = {}
        for sid in sorted(side):
            keys, fills = side[sid]
            # a keypoint wins where a filler span overlaps it: cut the filler around keypoints
            spans = [(int(s), int(e), 1.0) for s, e in keys]
            for s, e in fills:
                spans += [(a, b, self.params.filler_weight) for a, b in _minus(int(s), int(e), keys)]
            out[sid] = sorted(spans)
        n_key = sum(int(e) - int(s) for keys, _ in side.values() for s, e in keys)
        self.report = {"filler_weight": self.params.filler_weight, "records": len(out), "keypoint_chars": n_key}
        return out


def _minus(s: int, e: int, holes: list[Any]) -> list[tuple[int, int]]:
    """``[s, e)`` without the spans ``holes``, as sorted disjoint pieces."""
    pieces = [(s, e)]
    for hs, he in holes:
        pieces = [p for a, b in pieces for p in ((a, min(b, int(hs))), (max(a, int(he)), b)) if p[0] < p[1]]
    return pieces
