"""The selection policy: how a token signal becomes the weights the loss uses.

Every strategy, static or dynamic, produces a *signal* (a score per rationale token); the recipe's
``weighting.select`` picks one *policy* for all of them:

* ``weight`` — the signal is the token weight (soft; the engine divides Σ(w·ℓ) by Σw as for any
  weights);
* ``top_k`` — a hard mask: within each sequence the ``⌈k·n⌉`` highest-scoring of its ``n``
  rationale tokens weigh 1, the others 0 (Rho-1's "keep the top share"). Ties go to the earlier
  token, so the count is exact and the choice deterministic.

Static strategies are selected once, over a record's whole rationale in the student's
tokenization (:func:`select_static`); dynamic ones at every step, over each sequence's rationale
*targets* at its stage (:mod:`kpod.losses.dynamic`). Both use :func:`top_k_mask`.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from kpod.data.records import CharSpanWeights, Record
from kpod.data.template import PromptTemplate
from kpod.data.tokenize import CharWeights


class Selection(BaseModel):
    """The selection policy applied to every weighting strategy's signal: ``weight`` (the signal is the
    token weight, normalised by Σw as any weights) or ``top_k`` (a hard mask keeping the ⌈k·n⌉
    highest-scoring of each sequence's n rationale tokens; ties to the earlier token)."""

    model_config = ConfigDict(extra="forbid")
    policy: Literal["weight", "top_k"] = Field(
        "weight", description="weight: the signal is the token weight; top_k: keep the top k of rationale tokens per sequence (hard mask)"
    )
    k: float = Field(0.6, gt=0.0, le=1.0, description="top_k: share of each sequence's rationale tokens kept (⌈k·n⌉ tokens)")


def kept_count(n: int | torch.Tensor, k: float) -> Any:
    """``⌈k·n⌉`` (tolerant of float rounding: 0.3·10 keeps 3, not 4)."""
    if isinstance(n, torch.Tensor):
        return torch.ceil(n.double() * k - 1e-9).long()
    return math.ceil(n * k - 1e-9)


def top_k_mask(scores: torch.Tensor, seq_ids: torch.Tensor, eligible: torch.Tensor, k: float) -> torch.Tensor:
    """Bool mask keeping, in every sequence, the ``⌈k·n⌉`` highest ``scores`` among its ``n``
    ``eligible`` positions (ties: the earlier position). Any shape; ``seq_ids`` (int) names each
    position's sequence, positions are ordered as in ``scores.flatten()``."""
    flat_s = scores.detach().reshape(-1).double()
    flat_q = seq_ids.reshape(-1).long()
    flat_e = eligible.reshape(-1)
    idx = flat_e.nonzero().squeeze(1)
    keep = torch.zeros_like(flat_e, dtype=torch.bool)
    if idx.numel() == 0:
        return keep.view(eligible.shape)
    s, q = flat_s[idx], flat_q[idx]
    # order: by sequence, then score descending, then position (two stable sorts)
    by_score = torch.sort(-s, stable=True).indices
    by_seq = torch.sort(q[by_score], stable=True).indices
    order = by_score[by_seq]
    q_sorted = q[order]
    _, counts = torch.unique_consecutive(q_sorted, return_counts=True)
    starts = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    rank = torch.arange(len(order), device=q.device) - starts
    limit = torch.repeat_interleave(kept_count(counts, k), counts)
    keep[idx[order[rank < limit]]] = True
    return keep.view(eligible.shape)


def select_static(
    weights: CharSpanWeights | None, selection: Selection, records: list[Record], template: PromptTemplate, tokenizer: Any
) -> CharSpanWeights | None:
    """A static strategy's character-span weights under ``selection``: unchanged for ``weight``;
    for ``top_k`` 1 on the kept tokens of each record's rationale (student tokenization) and 0
    elsewhere, as one span per token ``[anchor, next anchor)``. Tokens that share an anchor (a
    whitespace-only token and the token after it) are one position: the collator weighs by anchor."""
    if selection.policy == "weight":
        return weights
    from kpod.weighting.tokens import rationale_tokens_many

    out: CharSpanWeights = {}
    for r, toks in zip(records, rationale_tokens_many(records, template, tokenizer)):
        anchors = np.unique(np.asarray([a for a, _ in toks.rat_spans], dtype=np.int64))
        if len(anchors) == 0:
            out[r.sample_id] = []
            continue
        w = CharWeights((weights or {}).get(r.sample_id)).many(anchors, np.float64)
        keep = top_k_mask(torch.from_numpy(w), torch.zeros(len(w), dtype=torch.long),
                          torch.ones(len(w), dtype=torch.bool), selection.k)
        ends = [*anchors[1:].tolist(), len(r.rationale)]
        out[r.sample_id] = [(int(a), int(e), float(k)) for a, e, k in zip(anchors.tolist(), ends, keep.tolist())]
    return out


def kept_ratio(
    weights: CharSpanWeights | None, records: list[Record], template: PromptTemplate, tokenizer: Any
) -> float:
    """Mean weight of the rationale tokens (student tokenization, one per anchor): the kept share
    of a top_k mask, the mean soft weight otherwise (mask learning's "kept ratio"); 1 for uniform."""
    if weights is None:
        return 1.0
    from kpod.weighting.tokens import rationale_tokens_many

    total, n = 0.0, 0
    for r, toks in zip(records, rationale_tokens_many(records, template, tokenizer)):
        anchors = np.unique(np.asarray([a for a, _ in toks.rat_spans], dtype=np.int64))
        total += float(CharWeights(weights.get(r.sample_id)).many(anchors, np.float64).sum())
        n += len(anchors)
    return round(total / n, 4) if n else 1.0
