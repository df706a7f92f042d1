"""Token-level distillation from a teacher's top-k log-probs: the student's log-probs at the
teacher's ids without ``[N, V]`` logits, and the divergences between the two distributions.

The teacher's distribution at a target position is stored as its top-k token ids and log-probs
(``ids [N, k]``, ``teacher_logp [N, k]``; a row with fewer than k entries pads with ``valid``
False). Comparing it with the student's needs the student's log-probs *at those ids only*,
normalised over the whole vocabulary: ``log p(i) = z_i − logsumexp(z)``. :func:`linear_logprobs_at`
computes them from the hidden states a chunk of rows at a time, like the chunked NLL
(kpod/losses/chunked.py): the backward pass recomputes each chunk's logits, so memory is one
chunk's ``[chunk, V]``, never ``[N, V]``.

Two ways to make the k stored values a distribution (:func:`bucket_logprobs`):

* ``renorm``: both teacher and student renormalised over the k ids (the mass outside is dropped);
* ``tail``: k + 1 buckets, the last one holding the mass outside the k ids,
  ``1 − Σ_i exp(log p(i))``, for teacher and student alike: a proper distribution over k + 1
  outcomes with nothing dropped.

Divergences (:func:`token_divergence`), per position, over those buckets, with the teacher q and
the student p (conventions of GKD, Agarwal et al. 2024, and TRL's ``generalized_jsd_loss``):

* ``forward_kl``: KL(q ‖ p) = Σ q (log q − log p) (mode covering; what classic KD minimises);
* ``reverse_kl``: KL(p ‖ q) = Σ p (log p − log q) (mode seeking);
* ``jsd``: the generalised Jensen–Shannon divergence with β ∈ (0, 1):
  β·KL(q ‖ m) + (1 − β)·KL(p ‖ m), m = β·q + (1 − β)·p; β = 0.5 is the symmetric JSD.

Padding buckets get log-prob ``PAD_LOGP`` (finite, exp underflows to exactly 0: they add 0 to
every sum, and no −inf reaches a gradient as NaN). A teacher bucket of zero where the student has
mass would make reverse KL infinite, so teacher log-probs are floored at ``LOG_FLOOR`` (1e-30 in
probability), and the tail bucket's mass at ``TAIL_FLOOR``.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch

Divergence = Literal["forward_kl", "reverse_kl", "jsd"]
BucketMode = Literal["renorm", "tail"]
LOG_FLOOR = math.log(1e-30)
TAIL_FLOOR = 1e-12
PAD_LOGP = -1.0e4  # exp(PAD_LOGP) == 0.0 in fp32


class _LinearLogProbsAt(torch.autograd.Function):
    """``out[n, j] = z[n, ids[n, j]] − logsumexp(z[n])`` with ``z = (h W^T + b) / T``, over chunks of
    rows; backward recomputes each chunk's softmax instead of saving logits."""

    @staticmethod
    def forward(ctx: Any, h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, ids: torch.Tensor,
                chunk: int, temperature: float) -> torch.Tensor:
        out = torch.empty(ids.shape, dtype=torch.float32, device=h.device)
        lse = torch.empty(h.shape[0], dtype=torch.float32, device=h.device)
        for s in range(0, h.shape[0], chunk):
            z = torch.nn.functional.linear(h[s : s + chunk], weight, bias).float().div_(temperature)
            lse[s : s + chunk] = torch.logsumexp(z, dim=-1)
            out[s : s + chunk] = z.gather(1, ids[s : s + chunk]) - lse[s : s + chunk, None]
            del z
        ctx.save_for_backward(h, weight, bias, ids, lse)
        ctx.chunk, ctx.temperature = chunk, temperature
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Any, ...]:
        h, weight, bias, ids, lse = ctx.saved_tensors
        chunk, temperature = ctx.chunk, ctx.temperature
        need_h, need_w, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        grad_h = torch.empty_like(h) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        grad_b = torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device) if need_b else None
        for s in range(0, h.shape[0], chunk):
            hc = h[s : s + chunk]
            g_out = grad_out[s : s + chunk].float()
            # d out[n, j] / d z[n, v] = [v = ids[n, j]] − softmax(z[n])_v, so
            # d L / d z = scatter(g) − softmax(z) · Σ_j g[n, j]; then / T for z = logits / T
            g = torch.nn.functional.linear(hc, weight, bias).float().div_(temperature)
            g.sub_(lse[s : s + chunk, None]).exp_().mul_(-g_out.sum(1, keepdim=True))
            g.scatter_add_(1, ids[s : s + chunk], g_out)
            g.div_(temperature)
            if grad_h is not None:
                grad_h[s : s + chunk] = (g.to(weight.dtype) @ weight).to(h.dtype)
            if grad_w is not None:
                grad_w.addmm_(g.t(), hc.float())
            if grad_b is not None:
                grad_b.add_(g.sum(0))
            del g
        return (
            grad_h,
            grad_w.to(weight.dtype) if grad_w is not None else None,
            grad_b.to(bias.dtype) if grad_b is not None else None,
            None, None, None,
        )


def linear_logprobs_at(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, ids: torch.Tensor,
                       chunk_tokens: int, temperature: float = 1.0) -> torch.Tensor:
    """The student's full-vocabulary log-probs at ``ids`` (``[N, k]``, fp32) from the LM head's input
    ``hidden [N, H]`` and its ``weight [V, H]`` / ``bias``, at ``temperature``; no ``[N, V]`` tensor
    is kept (peak: one chunk of ``chunk_tokens`` rows). Padded ids must still be valid indices
    (e.g. 0); mask them in :func:`bucket_logprobs`."""
    if chunk_tokens < 1:
        raise ValueError("chunk_tokens must be ≥ 1")
    if temperature <= 0:
        raise ValueError("temperature must be > 0")
    if ids.dim() != 2 or ids.shape[0] != hidden.shape[0]:
        raise ValueError(f"ids must be [N, k] with N = {hidden.shape[0]} rows, got {tuple(ids.shape)}")
    return _LinearLogProbsAt.apply(hidden, weight, bias, ids.long(), chunk_tokens, float(temperature))


def _log1mexp_sum(logp: torch.Tensor) -> torch.Tensor:
    """log(1 − Σ_j exp(logp[:, j])) over each row, with the mass floored at TAIL_FLOOR."""
    mass = torch.exp(logp).sum(-1)
    return torch.log(torch.clamp(1.0 - mass, min=TAIL_FLOOR))


def bucket_logprobs(student_logp: torch.Tensor, teacher_logp: torch.Tensor, valid: torch.Tensor,
                    mode: BucketMode, teacher_tail: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Student and teacher log-probs over the same buckets: the valid top-k ids, renormalised
    (``renorm``, ``[N, k]``) or with a tail bucket for the rest (``tail``, ``[N, k + 1]``). The
    teacher's tail is ``teacher_tail`` (``[N]``, its log mass outside the top k as stored, computed
    before the top-k log-probs were rounded) when given, else 1 − Σ of its top-k probabilities.
    Invalid (padding) ids get log-prob ``PAD_LOGP`` (probability 0) in both; the teacher's are
    floored at ``LOG_FLOOR`` and detached."""
    pad = torch.tensor(PAD_LOGP, dtype=torch.float32, device=student_logp.device)
    p = torch.where(valid, student_logp.float(), pad)
    q = torch.where(valid, torch.clamp(teacher_logp.detach().float(), min=LOG_FLOOR), pad)
    if mode == "renorm":
        return p - torch.logsumexp(p, -1, keepdim=True), q - torch.logsumexp(q, -1, keepdim=True)
    if mode == "tail":
        q_tail = _log1mexp_sum(q) if teacher_tail is None else torch.clamp(
            teacher_tail.detach().float(), min=math.log(TAIL_FLOOR))
        return torch.cat([p, _log1mexp_sum(p)[:, None]], 1), torch.cat([q, q_tail[:, None]], 1)
    raise ValueError(f"bucket mode {mode!r}: expected 'renorm' or 'tail'")


def _kl(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """KL(a ‖ b) per row over finite log-probs (a bucket where a has no mass adds exactly 0)."""
    return (torch.exp(log_a) * (log_a - log_b)).sum(-1)


def token_divergence(student_logp: torch.Tensor, teacher_logp: torch.Tensor, kind: Divergence,
                     beta: float = 0.5) -> torch.Tensor:
    """Per-position divergence ``[N]`` between the teacher q and the student p, both given as
    log-probs over the same buckets (:func:`bucket_logprobs`); differentiable in the student only
    (the teacher is detached)."""
    p, q = student_logp, teacher_logp.detach()
    if kind == "forward_kl":
        return _kl(q, p)
    if kind == "reverse_kl":
        return _kl(p, q)
    if kind == "jsd":
        if not 0.0 < beta < 1.0:
            raise ValueError(f"jsd beta must be in (0, 1), got {beta} (0 is forward_kl, 1 reverse_kl)")
        m = torch.logsumexp(torch.stack([q + math.log(beta), p + math.log(1.0 - beta)]), dim=0)
        return beta * _kl(q, m) + (1.0 - beta) * _kl(p, m)
    raise ValueError(f"divergence {kind!r}: expected forward_kl, reverse_kl or jsd")
