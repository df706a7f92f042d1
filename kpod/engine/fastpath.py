"""Which of the training fast paths a student can take: padding-free packing, the chunked loss.

Both are exact (same per-token losses, weights and gradients as the padded, full-logits path, to
float rounding), so ``auto`` may turn them on; each is checked against the model it is used on.
"""

from __future__ import annotations

from typing import Any

import torch

from kpod.data.packing import packing_problem
from kpod.losses.base import TokenLossBase
from kpod.losses.chunked import head_of
from kpod.recipe import RecipeError

DEFAULT_LOSS_CHUNK = 256  # target tokens per LM-head chunk under loss_chunk_tokens: auto


class FastPathError(RecipeError):
    """A fast path the recipe asks for explicitly cannot be used with this student (names the field)."""


def packing_refusal(problem: str) -> FastPathError:
    """The error for ``train.packing: true`` where ``problem`` rules packing out."""
    return FastPathError(f"train.packing: true: {problem}; set train.packing: false or auto")


def _head_problem(model: Any) -> str | None:
    """Why the LM head cannot be applied a chunk at a time (None: it is a plain nn.Linear)."""
    head = head_of(model)
    return None if type(head) is torch.nn.Linear else f"the student's LM head is a {type(head).__name__}, not a plain nn.Linear"


def chunk_refusal(setting: int | str, problem: str) -> FastPathError:
    """The error for an explicit ``train.loss_chunk_tokens`` size where ``problem`` rules it out."""
    return FastPathError(f"train.loss_chunk_tokens: {setting}: {problem}; set it to 0 (full logits) or auto")


def _chunk_problem(model: Any, loss_fn: TokenLossBase, fsdp: bool) -> str | None:
    """Why the chunked loss cannot run for this student and loss (None: it can)."""
    if loss_fn.needs_full_logits is not None:  # a loss that compares padded rows says why
        return loss_fn.needs_full_logits
    if (reason := _head_problem(model)) is not None:
        return reason
    if fsdp:
        return "under FSDP the LM head's weight is sharded outside the model's forward"
    return None


def _resolve_chunk(setting: int | str, problem: str | None, unit: str) -> tuple[int, str]:
    """``train.loss_chunk_tokens`` → tokens per chunk (0: full logits) and why, given what (if
    anything) rules the chunked head out; an explicit size it cannot take is an error."""
    if setting == 0:
        return 0, "off (train.loss_chunk_tokens: 0)"
    if problem is None:
        n = DEFAULT_LOSS_CHUNK if setting == "auto" else int(setting)
        return n, f"{n} {unit} per chunk"
    if setting == "auto":
        return 0, f"off ({problem})"
    raise chunk_refusal(setting, problem)


def resolve_loss_chunk(setting: int | str, model: Any, loss_fn: TokenLossBase, fsdp: bool) -> tuple[int, str]:
    """``train.loss_chunk_tokens`` for training: the loss, the LM head and FSDP decide."""
    return _resolve_chunk(setting, _chunk_problem(model, loss_fn, fsdp), "target tokens")


def resolve_difficulty_chunk(setting: int | str, model: Any) -> tuple[int, str]:
    """``train.loss_chunk_tokens`` for the step-difficulty pass (Eq. 8): no training loss takes
    part there and the pass runs on the unwrapped student, so only the LM head decides."""
    return _resolve_chunk(setting, _head_problem(model), "rationale tokens")


def resolve_packing(
    setting: bool | str, model: Any, is_encoder_decoder: bool, vocab: int, device: torch.device,
    loss_fn: TokenLossBase | None = None,
) -> tuple[bool, str]:
    """``train.packing`` → whether training batches (and the difficulty pass) are packed, and why;
    ``loss_fn`` None: no training loss takes part (the difficulty pass)."""
    if setting is False:
        return False, "off (train.packing: false)"
    problem = loss_fn.packing_problem() if loss_fn is not None else None  # e.g. a loss comparing padded rows
    if problem is None:
        problem = packing_problem(model, is_encoder_decoder, vocab, device, "student")
    if problem is None:
        return True, "on"
    if setting == "auto":
        return False, f"off ({problem})"
    raise packing_refusal(problem)
