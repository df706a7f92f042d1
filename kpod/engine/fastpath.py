"""Which of the training fast paths a student can take: padding-free packing, the chunked loss.

Both are exact (same per-token losses, weights and gradients as the padded, full-logits path, to
float rounding), so ``auto`` may turn them on; each is checked against the model it is used on.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from kpod.data.packing import packing_problem

DEFAULT_LOSS_CHUNK = 256  # target tokens per LM-head chunk under loss_chunk_tokens: auto


class FastPathError(ValueError):
    """A fast path the recipe asks for explicitly cannot be used with this student (names the field)."""


def _head(model: Any) -> Any:
    get = getattr(model, "get_output_embeddings", None)
    return get() if get is not None else None


@contextlib.contextmanager
def head_returns_hidden(model: Any) -> Iterator[torch.nn.Linear]:
    """Within the block, the model's LM head returns its input: ``model(...).logits`` are the
    hidden states the head would have projected (after any scaling the model applies first, as
    T5's ``d_model**-0.5``). The call still goes through every wrapper (DDP, autocast, compile)."""
    head = _head(model)
    head.forward = _identity  # an instance attribute shadows nn.Linear.forward for this object only
    try:
        yield head
    finally:
        del head.forward


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _chunk_problem(model: Any, loss_fn: Any, fsdp: bool) -> str | None:
    """Why the chunked loss cannot run for this student and loss (None: it can)."""
    if (reason := getattr(loss_fn, "needs_full_logits", None)) is not None:
        return reason
    if not callable(getattr(loss_fn, "from_hidden", None)):
        return f"the loss {getattr(loss_fn, 'name', type(loss_fn).__name__)!r} has no from_hidden method"
    if type(_head(model)) is not torch.nn.Linear:
        return f"the student's LM head is a {type(_head(model)).__name__}, not a plain nn.Linear"
    if fsdp:
        return "under FSDP the LM head's weight is sharded outside the model's forward"
    return None


def resolve_loss_chunk(setting: int | str, model: Any, loss_fn: Any, fsdp: bool) -> tuple[int, str]:
    """``train.loss_chunk_tokens`` → tokens per chunk (0: full logits) and why."""
    if setting == 0:
        return 0, "off (train.loss_chunk_tokens: 0)"
    problem = _chunk_problem(model, loss_fn, fsdp)
    if problem is None:
        n = DEFAULT_LOSS_CHUNK if setting == "auto" else int(setting)
        return n, f"{n} target tokens per chunk"
    if setting == "auto":
        return 0, f"off ({problem})"
    raise FastPathError(f"train.loss_chunk_tokens: {setting}: {problem}; set it to 0 (full logits) or auto")


def resolve_packing(
    setting: bool | str, model: Any, is_encoder_decoder: bool, vocab: int, device: torch.device, loss_fn: Any = None
) -> tuple[bool, str]:
    """``train.packing`` → whether training batches (and the difficulty pass) are packed, and why."""
    if setting is False:
        return False, "off (train.packing: false)"
    problem = getattr(loss_fn, "needs_full_logits", None)  # a loss comparing padded rows
    if problem is None:
        problem = packing_problem(model, is_encoder_decoder, vocab, device, "student")
    if problem is None:
        return True, "on"
    if setting == "auto":
        return False, f"off ({problem})"
    raise FastPathError(f"train.packing: true: {problem}; set train.packing: false or auto")
