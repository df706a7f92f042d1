"""Token weighting strategies (registry kind ``weighting``)."""

from kpod.weighting import attention as attention  # noqa: F401  (registers)
from kpod.weighting import dynamic as dynamic  # noqa: F401  (registers)
from kpod.weighting import excess_loss as excess_loss  # noqa: F401  (registers)
from kpod.weighting import mask_learning as mask_learning  # noqa: F401  (registers)
from kpod.weighting import oracle as oracle  # noqa: F401  (registers)
from kpod.weighting import precomputed as precomputed  # noqa: F401  (registers)
from kpod.weighting import uniform as uniform  # noqa: F401  (registers)
from kpod.weighting.base import CharSpanWeights, WeightingContext, WeightingStrategy

__all__ = ["CharSpanWeights", "WeightingContext", "WeightingStrategy"]
