"""``uniform``: every rationale token weighs 1 (standard CoT distillation, the w.o.-sig ablation)."""

from __future__ import annotations

from typing import ClassVar

from kpod.registry import WEIGHTING
from kpod.weighting.base import CharSpanWeights, WeightingContext, WeightingStrategy


@WEIGHTING
class Uniform(WeightingStrategy):
    """Static: every rationale token weighs 1 (standard CoT distillation, Eq. 1; under ``top_k``,
    which has no signal to rank, each rationale's first ⌈k·n⌉ tokens)."""

    name: ClassVar[str] = "uniform"

    def compute(self, ctx: WeightingContext) -> CharSpanWeights | None:
        return None
