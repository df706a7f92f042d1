"""Contract of a weighting strategy.

A strategy returns token significance weights as *data*: per ``sample_id`` a list of
``(char_start, char_end, weight)`` spans over the record's ``rationale`` text, or ``None`` for
"weight 1 everywhere". The collator projects them onto any tokenizer through offsets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

from pydantic import BaseModel

from kpod.data.records import CharSpanWeights, Record


@dataclass
class WeightingContext:
    records: list[Record]
    seed: int
    cache_dir: Path | None = None  # root of the weight cache (default: $KPOD_CACHE or ~/.cache/kpod)
    extras: dict[str, Any] = field(default_factory=dict)  # student, tokenizer, template, device


class WeightingStrategy(Protocol):
    name: ClassVar[str]
    Params: ClassVar[type[BaseModel]]

    def compute(self, ctx: WeightingContext) -> CharSpanWeights | None: ...
