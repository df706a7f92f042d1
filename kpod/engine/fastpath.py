"""Which of the training fast paths a student can take: padding-free packing, the chunked loss.

Both are exact (same per-token losses, weights and gradients as the padded, full-logits path, to
float rounding), so ``auto`` may turn them on; each is checked against the model it is used on.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from typing import Any

import torch

DEFAULT_LOSS_CHUNK = 256  # target tokens per LM-head chunk under loss_chunk_tokens: auto


PACK_ROWS_OF = 1  # packed row width in longest sequences of the micro-batch (dense-mask attention)


def pack_row_factor(model: Any) -> int | None:
    """Packed row width, in longest sequences: varlen kernels (flash attention) cost nothing across
    sequences, so every sequence goes in one row (``None``); sdpa / eager build a dense block mask
    over the row, so rows stay short (attention work grows with the row's width)."""
    impl = str(getattr(getattr(model, "config", None), "_attn_implementation", ""))
    return None if impl.startswith("flash_attention") else PACK_ROWS_OF


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


@torch.no_grad()
def packing_matches_padding(model: Any, vocab: int, device: torch.device) -> bool:
    """Does this causal model give a packed batch (position ids restarting, no attention mask) the
    logits it gives the padded one? Two short random sequences, fp32, eval mode."""
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, vocab, (7,), generator=g)
    b = torch.randint(0, vocab, (4,), generator=g)
    padded = torch.zeros((2, 7), dtype=torch.long)
    padded[0], padded[1, :4] = a, b
    att = torch.zeros((2, 7), dtype=torch.long)
    att[0], att[1, :4] = 1, 1
    packed = torch.cat([a, b])[None]
    pos = torch.cat([torch.arange(7), torch.arange(4)])[None]
    was_training = model.training
    model.eval()
    try:
        ref = model(input_ids=padded.to(device), attention_mask=att.to(device), use_cache=False).logits.float()
        out = model(input_ids=packed.to(device), position_ids=pos.to(device), use_cache=False).logits.float()
    finally:
        model.train(was_training)
    got = torch.cat([out[0, :7], out[0, 7:]])
    want = torch.cat([ref[0], ref[1, :4]])
    scale = want.abs().max().clamp_min(1.0)
    return bool(((got - want).abs().max() / scale) < 1e-3)


def resolve_packing(
    setting: bool | str, model: Any, is_encoder_decoder: bool, vocab: int, device: torch.device, loss_fn: Any = None
) -> tuple[bool, str]:
    """``train.packing`` → whether training batches are packed, and why."""
    if setting is False:
        return False, "off (train.packing: false)"
    problem = getattr(loss_fn, "needs_full_logits", None)  # a loss comparing padded rows
    if problem is not None:
        pass
    elif is_encoder_decoder:
        problem = "encoder-decoder students are not packed (length-grouped padding instead)"
    else:
        params = inspect.signature(model.forward).parameters
        if "position_ids" not in params and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            problem = "the student's forward takes no position_ids"
        elif not packing_matches_padding(model, vocab, device):
            problem = "the student's attention does not keep packed sequences apart (checked on a probe batch)"
    if problem is None:
        return True, "on"
    if setting == "auto":
        return False, f"off ({problem})"
    raise FastPathError(f"train.packing: true: {problem}; set train.packing: false or auto")
