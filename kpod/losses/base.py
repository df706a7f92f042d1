"""Per-token losses. A loss returns values per token; the *engine* reduces.

``TokenLoss`` tensors are ``[B, T]`` aligned with the (shifted, for causal models) targets:
``nll`` (fp32, nats), ``weight`` (fp32), ``mask`` (bool, ``labels != -100``) and ``is_answer``
(bool, answer-sentence tokens incl. EOS). The engine computes Σ(w·ℓ·mask) / Σ(w·mask) over the
whole accumulation window and all ranks (docs/method.md, 'Map from the paper to the code').

A loss may add a term that is not per token (MCC-KD's consistency between rows): ``extra`` is
the micro-batch's *sum* of such terms, and ``extra_count(batch)`` (no logits) how many terms the
micro-batch holds; the engine divides by the window's total count over all ranks, so the window
adds exactly the mean term, however the window is cut into micro-batches and ranks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import torch
import torch.nn.functional as F
from pydantic import BaseModel

from kpod.component import Component
from kpod.data.tokenize import IGNORE_INDEX

if TYPE_CHECKING:
    from kpod.losses.dynamic import DynamicWeights


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
    Encoder–decoder models align labels themselves: no shift (shifting them too drops a target).
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


@torch.no_grad()
def token_entropy(logits: torch.Tensor, mask: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """Predictive entropy (nats, fp32) at every position of ``mask`` (``logits`` ``[B, T', V]``
    aligned with it), 0 elsewhere; a chunk of positions at a time, so no fp32 copy of the whole
    logits is made."""
    out = torch.zeros(mask.shape, dtype=torch.float32, device=logits.device)
    idx = mask.reshape(-1).nonzero().squeeze(1)
    flat = logits.reshape(-1, logits.size(-1))
    vals = torch.empty(idx.numel(), dtype=torch.float32, device=logits.device)
    for s in range(0, idx.numel(), chunk):
        p = torch.softmax(flat.index_select(0, idx[s : s + chunk]).float(), dim=-1)
        vals[s : s + chunk] = -torch.xlogy(p, p).sum(-1)
    return out.view(-1).index_put((idx,), vals).view(mask.shape)


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

    # a dynamic weighting strategy's signal and policy (kpod/losses/dynamic.py), set by the engine
    # with :meth:`use_dynamic`; None: the batch's static weights as they are
    dynamic: DynamicWeights | None = None

    def target_weights(
        self, batch: dict[str, torch.Tensor], is_encoder_decoder: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(weight, mask, is_answer)``, each ``[B, T']`` aligned with the shifted targets."""
        raise NotImplementedError(f"{type(self).__name__}.target_weights")

    def bind(self, student: Any, device: torch.device | str) -> None:
        """Called once by the engine with the student (model, tokenizer) and the training device
        before the first batch; a loss that needs more than the batch (an online teacher) loads it
        here."""

    def packing_problem(self) -> str | None:
        """Why this loss cannot take packed batches (None: it can)."""
        return self.needs_full_logits

    def generates(self) -> str | None:
        """The recipe field that makes :meth:`on_policy_batch` run the model (None: it does not)."""
        return None

    def on_policy_batch(self, batch: dict[str, Any], model: Any, seed: int, step: int) -> dict[str, Any]:
        """The micro-batch the loss trains on at optimizer step ``step``: ``batch`` itself, or (an
        on-policy loss) with some rows continued by ``model``, the student as it is now."""
        return batch

    def extra_count(self, batch: dict[str, torch.Tensor], is_encoder_decoder: bool) -> int:
        """How many non-token terms (``TokenLoss.extra``) the micro-batch holds, without logits; a
        loss with such a term overrides it (see the module docstring)."""
        return 0

    @property
    def has_extra_term(self) -> bool:
        """Whether the loss adds a non-token term to its per-token values: it overrides :meth:`extra_count`."""
        return type(self).extra_count is not TokenLossBase.extra_count

    def reads_token_weights(self) -> bool:
        """Whether the loss weighs rationale tokens by the weighting strategy's weights (the
        ``kpod`` loss does; ``std_cot`` and the baselines' losses weigh every token 1)."""
        return False

    def dynamic_problem(self) -> str | None:
        """Why this loss cannot take a dynamic strategy's weights, or None. Only a loss that reads
        token weights and computes its per-token values with this base's ``__call__`` /
        ``from_hidden`` can (otherwise the signal would be silently ignored)."""
        if not self.reads_token_weights():
            return f"loss {self.name!r} (with these params) does not read token weights; use loss: {{name: kpod}}"
        base = TokenLossBase
        if type(self).__call__ is not base.__call__ or type(self).from_hidden is not base.from_hidden:
            return f"loss {self.name!r} computes its own per-token values; dynamic weights need the base's"
        return None

    def use_dynamic(self, dynamic: DynamicWeights) -> None:
        """Weigh rationale targets by a dynamic strategy's signal at every step."""
        if (problem := self.dynamic_problem()) is not None:
            raise ValueError(problem)
        self.dynamic = dynamic

    def window_weights(
        self, batch: dict[str, torch.Tensor], is_encoder_decoder: bool
    ) -> torch.Tensor:
        """Per-token weights whose sum is the batch's share of the window's denominator (no logits):
        :meth:`target_weights`' weights, adjusted by a dynamic strategy's policy."""
        w, mask, is_answer = self.target_weights(batch, is_encoder_decoder)
        if self.dynamic is None:
            return w
        from kpod.losses.dynamic import sequence_ids

        return self.dynamic.window_weights(w, mask, is_answer, sequence_ids(batch, is_encoder_decoder, w.shape))

    def _weights(
        self, nll: torch.Tensor, entropy: torch.Tensor | None, batch: dict[str, torch.Tensor],
        is_encoder_decoder: bool, vocab_size: int,
    ) -> TokenLoss:
        w, mask, is_answer = self.target_weights(batch, is_encoder_decoder)
        if self.dynamic is not None:
            from kpod.losses.dynamic import sequence_ids

            seq = sequence_ids(batch, is_encoder_decoder, w.shape)
            w = self.dynamic.apply(w, nll, entropy, mask, is_answer, seq, vocab_size)
        return TokenLoss(nll=nll, weight=w, mask=mask, is_answer=is_answer)

    def __call__(
        self, logits: torch.Tensor, batch: dict[str, torch.Tensor], is_encoder_decoder: bool
    ) -> TokenLoss:
        nll, mask, sl = per_token_nll(logits, batch["labels"], is_encoder_decoder)
        entropy = None
        if self.dynamic is not None and self.dynamic.needs_entropy:
            entropy = token_entropy(logits[:, :-1] if sl.start == 1 else logits, mask)
        return self._weights(nll, entropy, batch, is_encoder_decoder, logits.size(-1))

    def from_hidden(
        self,
        hidden: torch.Tensor,
        head: torch.nn.Linear,
        batch: dict[str, torch.Tensor],
        is_encoder_decoder: bool,
        chunk_tokens: int,
    ) -> TokenLoss:
        """The same TokenLoss as ``self(head(hidden), …)``, a chunk of target tokens at a time."""
        from kpod.losses.chunked import linear_token_stats

        want_entropy = self.dynamic is not None and self.dynamic.needs_entropy
        nll, entropy, _, _ = linear_token_stats(
            hidden, head.weight, head.bias, batch["labels"], is_encoder_decoder, chunk_tokens, entropy=want_entropy
        )
        return self._weights(nll, entropy, batch, is_encoder_decoder, head.weight.shape[0])
