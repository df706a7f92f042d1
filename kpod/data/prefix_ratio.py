"""Where a prefix ratio cuts a target: the token-level curricula's rule (``icl``, Jia et al.).

Under a prefix ratio ``p`` the leading ``⌊n·p⌋`` of a sample's ``n`` target tokens are given as
input (no loss). Pure arithmetic on token counts and anchors, no torch: the collator cuts with it
(:mod:`kpod.data.collate`) and the schedulers' math (:mod:`kpod.schedulers.curricula_math`) is
stated in the same terms.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def prefix_tokens(n_target_tokens: int, ratio: float) -> int:
    """Target tokens given under a prefix ratio: ``⌊n·p⌋`` (Jia et al.'s released code)."""
    if n_target_tokens < 0 or not 0.0 <= ratio <= 1.0:
        raise ValueError(f"prefix ratio: need n >= 0 and 0 <= ratio <= 1, got {n_target_tokens}, {ratio}")
    return int(math.floor(n_target_tokens * ratio + 1e-9))


def prefix_char_cut(target_anchors: Sequence[int], ratio: float, end: int) -> int:
    """Character where the target begins when the first ``⌊n·p⌋`` of the ``n`` target tokens
    (anchors in order; ``end`` = text length, the EOS anchor) are given: the anchor of target
    token ``⌊n·p⌋``. A whitespace-only token shares the next token's anchor, so at such a
    boundary one token fewer is given."""
    anchors = [int(a) for a in target_anchors]
    if any(b < a for a, b in zip(anchors, anchors[1:])):
        raise ValueError("prefix ratio: target anchors must be non-decreasing")
    k = prefix_tokens(len(anchors), ratio)
    return anchors[k] if k < len(anchors) else end
