"""The weighting phase's one cache path: look a strategy's weights up by content, or compute and
store them.

The key is :func:`kpod.weighting.cache.cache_key` of the records' content, the strategy's name,
its params (:meth:`~kpod.weighting.base.WeightingStrategy.key_params`), the seed and the model
digests the strategy names in :meth:`~kpod.weighting.base.WeightingStrategy.cache_inputs`. A
strategy that returns None there is computed every time.
"""

from __future__ import annotations

from typing import Any

from kpod.cache import CacheDamaged
from kpod.weighting.base import CharSpanWeights, WeightingContext, WeightingStrategy
from kpod.weighting.cache import cache_key, cache_path, load_weights, save_weights


def compute_cached(strategy: WeightingStrategy, ctx: WeightingContext) -> tuple[CharSpanWeights | None, dict[str, Any]]:
    """``(weights, report)``: the cached weights (``report["cache_hit"]`` True, the stored
    report otherwise unchanged) or freshly computed ones, stored when the strategy is cached."""
    inputs = strategy.cache_inputs(ctx)
    if inputs is None:
        weights = strategy.compute(ctx)
        return weights, dict(strategy.report)
    path = cache_path(cache_key(ctx.records, strategy.name, strategy.key_params(), ctx.seed, inputs), ctx.cache_dir)
    if path.exists():
        try:
            weights, meta = load_weights(path)
            return weights, {**meta, "cache_hit": True, "cache_path": str(path)}
        except CacheDamaged as e:  # the entry is removed: computed again below, said on one line
            ctx.reporter.warn(f"{e}; computing the weights again")
    computed = strategy.compute(ctx)
    if computed is None:  # "weight 1 everywhere" needs no cache entry
        return None, dict(strategy.report)
    meta = dict(strategy.report)
    save_weights(path, computed, meta)
    return computed, {**meta, "cache_hit": False, "cache_path": str(path)}
