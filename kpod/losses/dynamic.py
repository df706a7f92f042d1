"""Dynamic token weights: a signal from the current student's distribution, at every step.

A dynamic weighting strategy (``dft``, ``entropy``; kpod/weighting/dynamic.py) gives a *signal*
per target token from what the loss already has — the token's NLL and, when asked, the predictive
entropy of its position, both computed on the chunk logits of the chunked loss or on the full
logits — under ``no_grad``: no extra forward pass, no ``[B, T, V]`` tensor, no gradient through
the weight. The recipe's selection policy (:mod:`kpod.weighting.select`) turns the signal into
the weight of each rationale target token:

* ``weight``: ``w_t = w_static · s_t``;
* ``top_k``: ``w_t = w_static · 1[t among the ⌈k·n⌉ best of its sequence's n rationale targets]``.

Answer-sentence tokens keep the loss's own weight (the answer NLL). The engine's denominator is
summed before the window's first forward (kpod/engine/train.py), so it cannot hold the signal:
:meth:`DynamicWeights.window_weights` gives what it can know without logits — for ``weight`` the
static weights (DFT's own normalisation: the mean of ``−sg(p)·log p`` over the tokens), for
``top_k`` the kept count ``⌈k·n⌉`` per sequence (Rho-1's mean over the kept tokens).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch

from kpod.weighting.select import kept_count, top_k_mask


class TokenSignal(Protocol):
    """What a dynamic strategy gives the loss: a detached score per target token."""

    name: str
    needs_entropy: bool

    def score(self, nll: torch.Tensor, entropy: torch.Tensor | None, vocab_size: int) -> torch.Tensor: ...


def sequence_ids(batch: dict[str, Any], is_encoder_decoder: bool, shape: torch.Size) -> torch.Tensor:
    """Which sequence each target position (``[B, T']``, shifted for causal models) belongs to: the
    row of a padded batch, the packed sequence (``seq_index``) of a packed one."""
    if batch.get("packed"):  # packing is causal only: targets are positions 1:
        return batch["seq_index"][:, 1:].to(batch["labels"].device)
    rows = torch.arange(shape[0], device=batch["labels"].device)
    return rows[:, None].expand(shape)


@dataclass(frozen=True)
class DynamicWeights:
    """A dynamic strategy's signal under the recipe's selection policy."""

    signal: TokenSignal
    policy: Literal["weight", "top_k"] = "weight"
    k: float = 1.0

    @property
    def needs_entropy(self) -> bool:
        return bool(self.signal.needs_entropy)

    def apply(
        self,
        weight: torch.Tensor,
        nll: torch.Tensor,
        entropy: torch.Tensor | None,
        mask: torch.Tensor,
        is_answer: torch.Tensor,
        seq_ids: torch.Tensor,
        vocab_size: int,
    ) -> torch.Tensor:
        """The per-token weights the loss multiplies the NLL by (detached)."""
        with torch.no_grad():
            rationale = mask & ~is_answer
            ent = entropy.detach() if entropy is not None else None
            score = self.signal.score(nll.detach(), ent, vocab_size).float()
            if self.policy == "top_k":
                factor = top_k_mask(score, seq_ids, rationale, self.k).float()
            else:
                factor = score
            return torch.where(rationale, weight * factor, weight).detach()

    def window_weights(
        self, weight: torch.Tensor, mask: torch.Tensor, is_answer: torch.Tensor, seq_ids: torch.Tensor
    ) -> torch.Tensor:
        """Per-token weights whose sum is the denominator this batch adds to its window, without
        logits: ``weight`` unchanged, or (``top_k``) each sequence's rationale weights scaled to sum
        to ``⌈k·n⌉`` × their mean (exactly the kept count under uniform static weights)."""
        if self.policy != "top_k":
            return weight
        rationale = mask & ~is_answer
        q = seq_ids.reshape(-1).long()
        r = rationale.reshape(-1)
        n_seq = int(q.max()) + 1 if q.numel() else 0
        n = torch.zeros(max(n_seq, 1), dtype=torch.float64, device=weight.device)
        n.index_add_(0, q[r], torch.ones(int(r.sum()), dtype=torch.float64, device=weight.device))
        scale = torch.where(n > 0, kept_count(n, self.k).double() / n.clamp_min(1), torch.zeros_like(n))
        per_token = scale[q.clamp_min(0)].view(weight.shape).to(weight.dtype)
        return torch.where(rationale, weight * per_token, weight)
