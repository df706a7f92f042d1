"""An example kpod plugin: the ``numbers_first`` weighting strategy.

Numbers, arithmetic operators and ``=`` get weight 1; every other character span gets the
constant ``other`` (default 0.2). Install it next to kpod (``pip install -e examples/numbers_first``)
and use it in a recipe as ``weighting: {name: numbers_first, params: {other: 0.1}}``.
"""

from __future__ import annotations

import re
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

from kpod.weighting.base import CharSpanWeights, WeightingContext, WeightingStrategy

_KEY = re.compile(r"\d+(?:\.\d+)?|[-+*/=×÷]")


class NumbersFirst(WeightingStrategy):
    """Numbers and operators weigh 1, every other character ``other``."""

    name: ClassVar[str] = "numbers_first"

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        other: float = Field(0.2, gt=0.0, le=1.0, description="weight of every non-numeric character")

    params: Params

    def compute(self, ctx: WeightingContext) -> CharSpanWeights:
        """``{sample_id: [(char_start, char_end, weight), ...]}`` over each rationale."""
        out: CharSpanWeights = {}
        for r in ctx.records:
            spans, pos = [], 0
            for m in _KEY.finditer(r.rationale):
                if m.start() > pos:
                    spans.append((pos, m.start(), self.params.other))
                spans.append((m.start(), m.end(), 1.0))
                pos = m.end()
            if pos < len(r.rationale):
                spans.append((pos, len(r.rationale), self.params.other))
            out[r.sample_id] = spans
        self.report = {"records": len(out)}
        return out
