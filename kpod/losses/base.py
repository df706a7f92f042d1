"""Per-token losses. A loss returns values per token; the *engine* reduces.

``TokenLoss`` tensors are ``[B, T]`` aligned with the (shifted, for causal models) targets:
``nll`` (fp32, nats), ``weight`` (fp32), ``mask`` (bool, ``labels != -100``) and ``is_answer``
(bool, answer-sentence tokens incl. EOS). The engine computes Σ(w·ℓ·mask) / Σ(w·mask) over the
whole accumulation window and all ranks (spec §10(h)).

A loss may add a term that is not per token (MCC-KD's consistency between rows): ``extra`` is
the micro-batch's *sum* of such terms, and ``extra_count(batch)`` (no logits) how many terms the
micro-batch holds; the engine divides by the window's total count over all ranks, so the window
adds exactly the mean term, however the window is cut into micro-batches and ranks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol

import torch
import torch.nn.functional as F
from pydantic import BaseModel

from kpod.component import Component
from kpod.data.tokenize import IGNORE_INDEX


@dataclass
class TokenLoss:
    nll: torch.Tensor
    weight: torch.Tensor
    mask: torch.Tensor
    is_answer: torch.Tensor
    extra: torch.Tensor | None = None  # 0-dim: the sum of the loss's non-token terms (see above)


def per_token_nll(
    logits: torch.Tensor, labels: torch.Tensor, is_encoder_decoder: bool
) -> tuple[torch.Tensor, torch.Tensor, slice]:
    """Token NLL in fp32, ``[B, T']``, and the mask of real targets.

    Causal models predict token ``t+1`` at position ``t``: logits drop the last position and
    labels the first (returned slice ``1:`` tells callers how to align side tensors).
    Encoder–decoder models align labels themselves: no shift (pitfall 4).
    """
    if is_encoder_decoder:
        sl = slice(0, None)
        lg, lb = logits, labels
    else:
        sl = slice(1, None)
        lg, lb = logits[:, :-1], labels[:, 1:]
    mask = lb != IGNORE_INDEX
    nll = F.cross_entropy(
        lg.float().reshape(-1, lg.size(-1)),
        lb.clamp_min(0).reshape(-1),
        reduction="none",
    ).view(lb.shape)
    return torch.where(mask, nll, torch.zeros_like(nll)), mask, sl


def target_mask(labels: torch.Tensor, is_encoder_decoder: bool) -> tuple[torch.Tensor, slice]:
    sl = slice(0, None) if is_encoder_decoder else slice(1, None)
    return labels[:, sl] != IGNORE_INDEX, sl


class Loss(Protocol):
    """A per-token loss. ``target_weights`` needs no logits, so the engine can sum the
    accumulation window's denominator before the window's first backward."""

    name: ClassVar[str]
    Params: ClassVar[type[BaseModel]]

    def target_weights(
        self, batch: dict[str, torch.Tensor], is_encoder_decoder: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(weight, mask, is_answer)``, each ``[B, T']`` aligned with the shifted targets."""
        ...

    def __call__(
        self, logits: torch.Tensor, batch: dict[str, torch.Tensor], is_encoder_decoder: bool
    ) -> TokenLoss: ...

    # ``from_hidden(hidden, head, batch, is_encoder_decoder, chunk_tokens)``: the same TokenLoss
    # from the LM head's input and the head (an ``nn.Linear``) without materialising the logits
    # (``train.loss_chunk_tokens``); :class:`TokenLossBase` provides it.


class TokenLossBase(Component):
    """Base of every loss (the ``LOSSES`` registry accepts only subclasses): per-token NLL from the
    logits (``__call__``) or from the hidden states (``from_hidden``), weights from
    :meth:`target_weights`, the one method a loss implements. A loss that overrides ``__call__``
    with another per-token value must override ``from_hidden`` to match, or the chunked path
    (``train.loss_chunk_tokens``) computes the base's NLL instead."""

    # why the loss needs the full logits of padded rows (None: it does not); the fast paths
    # (chunked loss, packing) are then refused with this reason (kpod/engine/fastpath.py)
    needs_full_logits: ClassVar[str | None] = None
    # the data.format whose records this loss reads (``meta["task"]``); None: any (the recipe
    # check in kpod/recipe/loading.py refuses another format before anything runs)
    data_format: ClassVar[str | None] = None

    def target_weights(
        self, batch: dict[str, torch.Tensor], is_encoder_decoder: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(weight, mask, is_answer)``, each ``[B, T']`` aligned with the shifted targets."""
        raise NotImplementedError(f"{type(self).__name__}.target_weights")

    def __call__(
        self, logits: torch.Tensor, batch: dict[str, torch.Tensor], is_encoder_decoder: bool
    ) -> TokenLoss:
        nll, _, _ = per_token_nll(logits, batch["labels"], is_encoder_decoder)
        w, mask, is_answer = self.target_weights(batch, is_encoder_decoder)
        return TokenLoss(nll=nll, weight=w, mask=mask, is_answer=is_answer)

    def from_hidden(
        self,
        hidden: torch.Tensor,
        head: torch.nn.Linear,
        batch: dict[str, torch.Tensor],
        is_encoder_decoder: bool,
        chunk_tokens: int,
    ) -> TokenLoss:
        """The same TokenLoss as ``self(head(hidden), …)``, a chunk of target tokens at a time."""
        from kpod.losses.chunked import linear_token_nll

        nll, _, _ = linear_token_nll(hidden, head.weight, head.bias, batch["labels"], is_encoder_decoder, chunk_tokens)
        w, mask, is_answer = self.target_weights(batch, is_encoder_decoder)
        return TokenLoss(nll=nll, weight=w, mask=mask, is_answer=is_answer)
