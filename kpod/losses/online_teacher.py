"""An online teacher for the ``kd`` loss: a causal model with the student's tokenizer runs beside
the student on every micro-batch, and the divergence is taken over the full vocabulary.

The teacher reads the micro-batch exactly as the student does (the same ids; a packed row by its
restarting position ids), without gradient, with its LM head returning its input, so the teacher's
``[B, T, V]`` logits never exist either: both heads run a chunk of target rows at a time in
:func:`linear_divergence`, whose backward pass recomputes each chunk (peak memory: one chunk's
``[chunk, V]`` logits for each model). Cost per step: one teacher forward (no backward), and the
student's and the teacher's head twice over the target rows (forward, then backward's recompute).
"""

from __future__ import annotations

from typing import Any

import torch

from kpod.data.packing import batch_inputs
from kpod.losses.chunked import head_returns_hidden
from kpod.losses.divergence import LOG_FLOOR, Divergence, token_divergence


def full_divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor, kind: Divergence, beta: float,
                    temperature: float) -> torch.Tensor:
    """Per-row divergence ``[N]`` between the teacher's and the student's softmax at ``temperature``
    over the whole vocabulary, from their logits ``[N, V]`` (the teacher's detached, its
    log-probs floored at ``LOG_FLOOR`` as for the stored top-k)."""
    p = torch.log_softmax(student_logits.float() / temperature, -1)
    q = torch.clamp(torch.log_softmax(teacher_logits.detach().float() / temperature, -1), min=LOG_FLOOR)
    return token_divergence(p, q, kind, beta)


class _LinearDivergence(torch.autograd.Function):
    """``full_divergence(h W^T + b, h_t W_t^T + b_t)`` a chunk of rows at a time; backward
    recomputes each chunk's logits (with autograd, so every divergence gets its exact gradient)."""

    @staticmethod
    def forward(ctx: Any, h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, teacher_h: torch.Tensor,
                teacher_w: torch.Tensor, teacher_b: torch.Tensor | None, spec: tuple[Any, ...]) -> torch.Tensor:
        kind, beta, temperature, chunk, dtype = spec
        out = torch.empty(h.shape[0], dtype=torch.float32, device=h.device)
        with torch.no_grad():
            for s in range(0, h.shape[0], chunk):
                z = torch.nn.functional.linear(h[s : s + chunk].to(dtype), weight.to(dtype),
                                               None if bias is None else bias.to(dtype))
                zt = torch.nn.functional.linear(teacher_h[s : s + chunk], teacher_w, teacher_b)
                out[s : s + chunk] = full_divergence(z, zt, kind, beta, temperature)
                del z, zt
        ctx.save_for_backward(h, weight, bias, teacher_h, teacher_w, teacher_b)
        ctx.spec = spec
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Any, ...]:
        h, weight, bias, teacher_h, teacher_w, teacher_b = ctx.saved_tensors
        kind, beta, temperature, chunk, dtype = ctx.spec
        need = ctx.needs_input_grad[:3]
        grad_h = torch.empty_like(h) if need[0] else None
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if need[1] else None
        grad_b = torch.zeros_like(bias, dtype=torch.float32) if bias is not None and need[2] else None
        for s in range(0, h.shape[0], chunk):
            with torch.enable_grad():
                hc = h[s : s + chunk].detach().requires_grad_(need[0])
                w = weight.detach().requires_grad_(need[1])
                b = bias.detach().requires_grad_(need[2]) if bias is not None else None
                z = torch.nn.functional.linear(hc.to(dtype), w.to(dtype), None if b is None else b.to(dtype))
                with torch.no_grad():
                    zt = torch.nn.functional.linear(teacher_h[s : s + chunk], teacher_w, teacher_b)
                div = full_divergence(z, zt, kind, beta, temperature)
                wrt = [x for x, n in ((hc, need[0]), (w, need[1]), (b, need[2])) if n and x is not None]
                got = iter(torch.autograd.grad(div, wrt, grad_out[s : s + chunk].float()))
            if need[0]:
                grad_h[s : s + chunk] = next(got)
            if need[1]:
                grad_w.add_(next(got).float())
            if grad_b is not None:
                grad_b.add_(next(got).float())
            del z, zt, div
        return (grad_h, None if grad_w is None else grad_w.to(weight.dtype),
                None if grad_b is None else grad_b.to(bias.dtype), None, None, None, None)


def linear_divergence(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                      teacher_hidden: torch.Tensor, teacher_head: torch.nn.Linear, kind: Divergence, beta: float,
                      temperature: float, chunk_tokens: int, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Per-row full-vocabulary divergence ``[N]`` from the student's head input ``hidden [N, H]``
    (with ``weight``/``bias``) and the teacher's ``teacher_hidden [N, H_t]`` through its head, a
    chunk of ``chunk_tokens`` rows at a time: no ``[N, V]`` tensor is kept for either model."""
    if chunk_tokens < 1:
        raise ValueError("chunk_tokens must be ≥ 1")
    spec = (kind, beta, float(temperature), chunk_tokens, dtype or hidden.dtype)
    tw = teacher_head.weight.detach().to(teacher_hidden.dtype)
    tb = None if teacher_head.bias is None else teacher_head.bias.detach().to(teacher_hidden.dtype)
    return _LinearDivergence.apply(hidden, weight, bias, teacher_hidden.detach(), tw, tb, spec)


class OnlineTeacher:
    """A frozen causal teacher beside the student; :meth:`hidden` gives its LM head's input for a
    micro-batch (no logits), :attr:`head` its LM head."""

    def __init__(self, model: Any, source: str) -> None:
        self.model = model.eval().requires_grad_(False)
        self.source = source

    @property
    def head(self) -> torch.nn.Linear:
        return self.model.get_output_embeddings()

    @property
    def vocab_size(self) -> int:
        return int(self.head.weight.shape[0])

    def to(self, device: torch.device | str) -> OnlineTeacher:
        self.model.to(device)
        return self

    @torch.no_grad()
    def hidden(self, batch: dict[str, Any]) -> torch.Tensor:
        """``[B, T, H_t]``: what the teacher's head would project at every position of the batch,
        read as the student reads it (:func:`kpod.data.packing.batch_inputs`)."""
        with head_returns_hidden(self.model):
            return self.model(**batch_inputs(batch, self.head.weight.device)).logits
