"""Per-token NLL straight from hidden states, a chunk of tokens at a time (no ``[B, T, V]`` logits).

The usual loss takes the model's full logits: ``B·T·V`` values, and a second copy in fp32 for the
cross-entropy (SmolLM2: V = 49,152; 8 × 512 tokens → 800 MB per copy). Here the LM head and the
log-softmax run on ``chunk`` target tokens at a time, only at positions with a target (prompt and
padding positions need no logits at all), and the backward pass recomputes each chunk's logits
instead of keeping them: peak memory is one chunk's logits, not the batch's.

Same maths as :func:`kpod.losses.base.per_token_nll` on ``lm_head(hidden)``: the head runs in
the dtype the model's own head would use (the autocast dtype under mixed precision), the
log-softmax in fp32; per-token values equal the full path's to float rounding (tests/engine/test_fast_paths.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from kpod.data.tokenize import IGNORE_INDEX


def head_of(model: Any) -> Any:
    """The model's LM head (``get_output_embeddings()``), or None."""
    get = getattr(model, "get_output_embeddings", None)
    return get() if get is not None else None


@contextlib.contextmanager
def head_returns_hidden(model: Any) -> Iterator[torch.nn.Linear]:
    """Within the block, the model's LM head returns its input: ``model(...).logits`` are the
    hidden states the head would have projected (after any scaling the model applies first, as
    T5's ``d_model**-0.5``). The call still goes through every wrapper (DDP, autocast, compile)."""
    head = head_of(model)
    head.forward = _identity  # an instance attribute shadows nn.Linear.forward for this object only
    try:
        yield head
    finally:
        del head.forward


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def compute_dtype(hidden: torch.Tensor) -> torch.dtype:
    """The dtype ``lm_head(hidden)`` would run in here: the autocast dtype if autocast is on."""
    dev = hidden.device.type
    if torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return hidden.dtype


class _LinearNLL(torch.autograd.Function):
    """``nll[n] = logsumexp(h[n] W^T + b) − (h[n] W^T + b)[y[n]]`` over chunks of rows of ``h``;
    backward recomputes each chunk's logits (softmax − one-hot) instead of saving them."""

    @staticmethod
    def forward(ctx: Any, h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, y: torch.Tensor,
                chunk: int, dtype: torch.dtype, want_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        w = weight.to(dtype)
        b = bias.to(dtype) if bias is not None else None
        nll = torch.empty(h.shape[0], dtype=torch.float32, device=h.device)
        lse = torch.empty_like(nll)
        # the predictive entropy per row (a dynamic weighting's signal, never differentiated);
        # empty when not asked for
        ent = torch.empty(h.shape[0] if want_entropy else 0, dtype=torch.float32, device=h.device)
        for s in range(0, h.shape[0], chunk):
            logits = torch.nn.functional.linear(h[s : s + chunk].to(dtype), w, b).float()
            target = logits.gather(1, y[s : s + chunk, None]).squeeze(1)
            # log-sum-exp in place: one chunk-sized buffer, not logsumexp's extra temporary
            m = logits.amax(dim=-1, keepdim=True)
            e = logits.sub_(m).exp_()  # e = exp(l − m)
            z = e.sum(-1)
            if want_entropy:  # H = log z − Σ e·log e / z  (e·log e = 0 where e underflows to 0)
                ent[s : s + chunk] = z.log() - torch.xlogy(e, e).sum(-1) / z
            lse_c = z.log_().add_(m.squeeze(1))
            lse[s : s + chunk] = lse_c
            nll[s : s + chunk] = lse_c - target
            del logits, e
        ctx.save_for_backward(h, weight, bias, y, lse)
        ctx.chunk, ctx.dtype = chunk, dtype
        ctx.mark_non_differentiable(ent)
        return nll, ent

    @staticmethod
    def backward(ctx: Any, grad_nll: torch.Tensor, _grad_ent: torch.Tensor | None = None) -> tuple[Any, ...]:
        h, weight, bias, y, lse = ctx.saved_tensors
        chunk, dtype = ctx.chunk, ctx.dtype
        w = weight.to(dtype)
        b = bias.to(dtype) if bias is not None else None
        need_h, need_w, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        grad_h = torch.empty_like(h) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        grad_b = torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device) if need_b else None
        for s in range(0, h.shape[0], chunk):
            hc = h[s : s + chunk].to(dtype)
            # d nll / d logits = softmax − one-hot(y), scaled by the incoming gradient per token;
            # computed in place in the chunk's logits buffer
            g = torch.nn.functional.linear(hc, w, b).float()
            g.sub_(lse[s : s + chunk, None]).exp_()
            g.scatter_add_(1, y[s : s + chunk, None], torch.full_like(g[:, :1], -1.0))
            g.mul_(grad_nll[s : s + chunk, None])
            g_c = g.to(dtype)  # no copy in fp32
            if grad_h is not None:
                grad_h[s : s + chunk] = (g_c @ w).to(h.dtype)
            if grad_w is not None:  # accumulated over chunks in fp32
                if g_c.dtype == torch.float32:
                    grad_w.addmm_(g_c.t(), hc)
                else:
                    grad_w.add_((g_c.t() @ hc).float())
            if grad_b is not None:
                grad_b.add_(g.sum(0))
            del g, g_c
        return (
            grad_h,
            grad_w.to(weight.dtype) if grad_w is not None else None,
            grad_b.to(bias.dtype) if grad_b is not None else None,
            None, None, None, None,
        )


def linear_token_nll(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    labels: torch.Tensor,
    is_encoder_decoder: bool,
    chunk_tokens: int,
) -> tuple[torch.Tensor, torch.Tensor, slice]:
    """Like :func:`~kpod.losses.base.per_token_nll` on ``F.linear(hidden, weight, bias)``, without
    the logits: ``(nll [B, T'] fp32, mask, slice)``; ``hidden`` is the head's input ``[B, T, H]``."""
    nll, _, mask, sl = linear_token_stats(hidden, weight, bias, labels, is_encoder_decoder, chunk_tokens)
    return nll, mask, sl


def linear_token_stats(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    labels: torch.Tensor,
    is_encoder_decoder: bool,
    chunk_tokens: int,
    entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, slice]:
    """:func:`linear_token_nll` plus, with ``entropy``, each target position's predictive entropy
    (nats, fp32, detached; 0 where there is no target) from the same chunk logits: no second pass.
    ``(nll, entropy or None, mask, slice)``."""
    if chunk_tokens < 1:
        raise ValueError("chunk_tokens must be ≥ 1")
    if is_encoder_decoder:
        sl = slice(0, None)
        hs, lb = hidden, labels
    else:
        sl = slice(1, None)
        hs, lb = hidden[:, :-1], labels[:, 1:]
    mask = lb != IGNORE_INDEX
    idx = mask.reshape(-1).nonzero().squeeze(1)
    h_sel = hs.reshape(-1, hs.size(-1)).index_select(0, idx)  # only positions with a target need logits
    y = lb.reshape(-1).index_select(0, idx)
    nll_sel, ent_sel = _LinearNLL.apply(h_sel, weight, bias, y, chunk_tokens, compute_dtype(hidden), entropy)
    nll = torch.zeros(lb.numel(), dtype=torch.float32, device=hidden.device).index_put((idx,), nll_sel)
    ent = None
    if entropy:
        ent = torch.zeros(lb.numel(), dtype=torch.float32, device=hidden.device).index_put((idx,), ent_sel)
        ent = ent.view(lb.shape)
    return nll.view(lb.shape), ent, mask, sl
