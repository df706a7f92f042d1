"""Padding-free packing of causal sequences (``train.packing``): training micro-batches, the
step-difficulty pass (kpod/difficulty.py) and mask learning's answer predictor.

A micro-batch's sequences are laid end to end in rows (first-fit decreasing into rows as wide as
its longest sequence), with ``position_ids`` restarting at 0 for every sequence and no attention
mask: transformers (5.x, ``masking_utils.find_packed_sequence_indices``) reads a position that
does not follow the previous one as the start of a new sequence and keeps attention inside each
sequence (block-diagonal causal mask for sdpa / eager; varlen kernels for flash attention). The
few pad tokens left at the end of a row form one more "sequence" of their own with no targets.

The first token of every sequence gets label −100, so the shifted causal loss never asks a
sequence's last token to predict the next sequence's first. The micro-batch (its samples, their
targets and weights) is the padded one's, so the engine's Σw reduction, accumulation and DDP are
unchanged; :func:`unpack_targets` maps per-token values back to the padded layout.

Whether a model may take packed batches at all is :func:`packing_problem`'s answer (causal, takes
``position_ids``, and packed logits equal padded ones on a probe batch), the same for every user.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from kpod.data.tokenize import IGNORE_INDEX


def pack_rows(lengths: Sequence[int], width: int) -> list[list[int]]:
    """Indices of ``lengths`` grouped into rows of at most ``width`` tokens (first-fit decreasing;
    deterministic: ties keep input order)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    free: list[int] = []
    for i in order:
        n = lengths[i]
        if n > width:
            raise ValueError(f"sequence of {n} tokens does not fit a packed row of {width}")
        for r, f in enumerate(free):
            if f >= n:
                rows[r].append(i)
                free[r] -= n
                break
        else:
            rows.append([i])
            free.append(width - n)
    return rows


CHAR_POS_PAD = -(1 << 30)  # a batch's ``char_pos`` where there is no character (padding)

# per-token fields a packed batch carries when its examples have them: (fill value, dtype)
PACKED_FIELDS: dict[str, tuple[float, torch.dtype]] = {
    "labels": (IGNORE_INDEX, torch.long),
    "weights": (0.0, torch.float32),
    "is_answer": (False, torch.bool),
    "char_pos": (CHAR_POS_PAD, torch.long),
}


def pack_examples(
    exs: Sequence[dict[str, np.ndarray]],
    sample_ids: Sequence[str],
    pad_id: int,
    width: int | None = None,
    rows: list[list[int]] | None = None,
) -> dict[str, Any]:
    """Collated causal examples (``input_ids`` and any of ``labels``, ``weights``, ``is_answer``,
    of equal length per example) → one packed batch holding the fields they have. ``seq_index`` /
    ``position_ids`` say, per packed token, which example (−1: padding) and which position in it
    it is. ``rows``: the examples' indices per row, when the caller already laid them out
    (:func:`pack_rows`); by default first-fit decreasing into rows of ``width`` (the longest)."""
    lengths = [len(e["input_ids"]) for e in exs]
    width = width or max(lengths)
    rows = pack_rows(lengths, width) if rows is None else rows
    r_n = len(rows)
    fields = {"input_ids": (pad_id, torch.long), **{k: v for k, v in PACKED_FIELDS.items() if k in exs[0]}}
    out = {k: torch.full((r_n, width), fill, dtype=dtype) for k, (fill, dtype) in fields.items()}
    position_ids = torch.zeros((r_n, width), dtype=torch.long)
    seq_index = torch.full((r_n, width), -1, dtype=torch.long)
    for r, members in enumerate(rows):
        at = 0
        for i in members:
            n = lengths[i]
            if at + n > width:
                raise ValueError(f"packed row {r}: its sequences need more than {width} tokens")
            for k in fields:
                out[k][r, at : at + n] = torch.from_numpy(np.asarray(exs[i][k]))
            position_ids[r, at : at + n] = torch.arange(n)
            seq_index[r, at : at + n] = i
            if "labels" in out:  # never a target: the shift would pair it with the previous sequence
                out["labels"][r, at] = IGNORE_INDEX
            at += n
        # the row's tail: positions 0, 1, … again, so it is a separate sequence nobody attends to
        position_ids[r, at:] = torch.arange(width - at)
    return {
        **out,
        "position_ids": position_ids,
        "sample_ids": list(sample_ids),
        "seq_index": seq_index,
        "packed": True,
    }


def batch_inputs(batch: dict[str, Any], device: torch.device | str) -> dict[str, Any]:
    """A training batch's forward arguments on ``device``: a packed batch by its restarting
    position ids (no attention mask: they separate the sequences), a padded one by its mask."""
    if batch.get("packed"):
        return {"input_ids": batch["input_ids"].to(device), "position_ids": batch["position_ids"].to(device),
                "use_cache": False}
    return {"input_ids": batch["input_ids"].to(device), "attention_mask": batch["attention_mask"].to(device)}


def unpack_targets(values: torch.Tensor, batch: dict[str, Any], width: int) -> torch.Tensor:
    """Per-target values of a packed causal batch (``[R, W−1]``, aligned with ``labels[:, 1:]``)
    → the padded batch's layout ``[B, width−1]`` (zeros where a padded batch has no token)."""
    seq = batch["seq_index"][:, 1:]
    pos = batch["position_ids"][:, 1:] - 1  # target at position p is predicted at p − 1
    real = (seq >= 0) & (pos >= 0)
    out = torch.zeros((len(batch["sample_ids"]), width - 1), dtype=values.dtype, device=values.device)
    out[seq[real], pos[real]] = values[real]
    return out


PACK_ROWS_OF = 1  # packed row width in longest sequences of the micro-batch (dense-mask attention)


def pack_row_factor(model: Any) -> int | None:
    """Packed row width, in longest sequences: varlen kernels (flash attention) cost nothing across
    sequences, so every sequence goes in one row (``None``); sdpa / eager build a dense block mask
    over the row, so rows stay short (attention work grows with the row's width)."""
    impl = str(getattr(getattr(model, "config", None), "_attn_implementation", ""))
    return None if impl.startswith("flash_attention") else PACK_ROWS_OF


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


def encoder_decoder_problem(who: str) -> str:
    """Why an encoder-decoder model is not packed (known from its configuration, before it is loaded)."""
    return f"encoder-decoder {who}s are not packed (length-grouped padding instead)"


def packing_problem(model: Any, is_encoder_decoder: bool, vocab: int, device: torch.device, who: str) -> str | None:
    """Why ``model`` (``who``: "student", "answer predictor") cannot take packed batches, or None
    when it can: encoder–decoder, no ``position_ids`` in its forward, or packed logits that differ
    from padded ones on a probe batch (:func:`packing_matches_padding`)."""
    if is_encoder_decoder:
        return encoder_decoder_problem(who)
    params = inspect.signature(model.forward).parameters
    if "position_ids" not in params and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return f"the {who}'s forward takes no position_ids"
    if not packing_matches_padding(model, vocab, device):
        return f"the {who}'s attention does not keep packed sequences apart (checked on a probe batch)"
    return None
