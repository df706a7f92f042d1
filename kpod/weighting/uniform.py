"""``uniform``: every rationale token weighs 1 (standard CoT distillation, the w.o.-sig ablation)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict

from kpod.registry import WEIGHTING
from kpod.weighting.base import CharSpanWeights, WeightingContext


@WEIGHTING
class Uniform:
    name: ClassVar[str] = "uniform"

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")

    def __init__(self, params: Params | None = None) -> None:
        self.params = params or self.Params()

    def compute(self, ctx: WeightingContext) -> CharSpanWeights | None:
        return None
