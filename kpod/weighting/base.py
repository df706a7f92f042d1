"""Contract of a weighting strategy.

A strategy returns token significance weights as *data*: per ``sample_id`` a list of
``(char_start, char_end, weight)`` spans over the record's ``rationale`` text, or ``None`` for
"weight 1 everywhere". The collator projects them onto any tokenizer through offsets.

A strategy only computes. Whether its weights are cached, and under which key, it says with
:meth:`WeightingStrategy.cache_inputs` (the digests of the models the weights come from) and
:attr:`WeightingStrategy.not_in_key` (params that do not change the weights); the lookup and the
store are :func:`kpod.weighting.cached.compute_cached`'s, the one path every strategy goes through.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from kpod.component import Component
from kpod.data.records import CharSpanWeights, Record

if TYPE_CHECKING:  # annotations only: weighting never calls up into these layers
    from kpod.data.template import PromptTemplate
    from kpod.models.student import Student
    from kpod.progress import Reporter
    from kpod.runs import MetricsWriter


@dataclass
class WeightingContext:
    """What a strategy may read. ``student`` and ``template`` are None where the caller has no
    student (heuristic strategies need neither); strategies that do call :meth:`student_and_template`."""

    records: list[Record]
    seed: int
    cache_dir: Path | None = None  # root of the weight cache (default: $KPOD_CACHE or ~/.cache/kpod)
    student: Student | None = None  # the student as initialised: model, tokenizer, is_encoder_decoder
    template: PromptTemplate | None = None  # the training/evaluation prompt template
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    reporter: Reporter | None = None  # progress lines of a long fit
    metrics: MetricsWriter | None = None  # metrics.jsonl events of a long fit
    # train.packing: whether a model the strategy trains itself (mask learning's causal answer
    # predictor) may take padding-free packed batches, as the student's training does
    packing: bool | str = False

    def student_and_template(self, who: str) -> tuple[Student, PromptTemplate]:
        if self.student is None or self.template is None:
            raise ValueError(f"weighting ({who}) reads the student and the prompt template; the caller passed none")
        return self.student, self.template


class WeightingStrategy(Component):
    """Base of every weighting strategy (the ``WEIGHTING`` registry accepts only subclasses)."""

    # shown in summary.json under ``weighting`` (and stored with cached weights); strategies
    # assign a new dict in compute()
    report: Mapping[str, Any] = MappingProxyType({})
    # params that do not change the weights: left out of the cache key
    not_in_key: ClassVar[frozenset[str]] = frozenset({"cache"})

    def compute(self, ctx: WeightingContext) -> CharSpanWeights | None:
        """Weights per sample_id over rationale characters, or None for weight 1 everywhere."""
        raise NotImplementedError(f"{type(self).__name__}.compute")

    def cache_inputs(self, ctx: WeightingContext) -> dict[str, Any] | None:
        """What the weights depend on besides the records, the params and the seed (digests of the
        models they are computed from), or None: not cached (the default; cheap strategies, and
        strategies whose ``cache`` param is off). Called before :meth:`compute`."""
        return None

    def key_params(self) -> dict[str, Any]:
        """The params as they enter the cache key (all but :attr:`not_in_key`)."""
        return self.params.model_dump(mode="json", exclude=set(self.not_in_key))
