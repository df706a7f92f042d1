"""Padding-free packing of causal training examples (``train.packing``).

A micro-batch's sequences are laid end to end in rows (first-fit decreasing into rows as wide as
its longest sequence), with ``position_ids`` restarting at 0 for every sequence and no attention
mask: transformers (5.x, ``masking_utils.find_packed_sequence_indices``) reads a position that
does not follow the previous one as the start of a new sequence and keeps attention inside each
sequence (block-diagonal causal mask for sdpa / eager; varlen kernels for flash attention). The
few pad tokens left at the end of a row form one more "sequence" of their own with no targets.

The first token of every sequence gets label −100, so the shifted causal loss never asks a
sequence's last token to predict the next sequence's first. The micro-batch (its samples, their
targets and weights) is the padded one's, so the engine's Σw reduction, accumulation and DDP are
unchanged; :func:`unpack_targets` maps per-token values back to the padded layout (tests).
"""

from __future__ import annotations

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


def pack_examples(
    exs: Sequence[dict[str, np.ndarray]], sample_ids: Sequence[str], pad_id: int, width: int | None = None
) -> dict[str, Any]:
    """Collated causal examples (``input_ids``, ``labels``, ``weights``, ``is_answer`` of equal
    length per example) → one packed batch. ``seq_index`` / ``seq_pos`` say, per packed token, which
    example (−1: padding) and which position in it it is."""
    lengths = [len(e["input_ids"]) for e in exs]
    width = width or max(lengths)
    rows = pack_rows(lengths, width)
    r_n = len(rows)
    input_ids = torch.full((r_n, width), pad_id, dtype=torch.long)
    position_ids = torch.zeros((r_n, width), dtype=torch.long)
    labels = torch.full((r_n, width), IGNORE_INDEX, dtype=torch.long)
    weights = torch.zeros((r_n, width), dtype=torch.float32)
    is_answer = torch.zeros((r_n, width), dtype=torch.bool)
    seq_index = torch.full((r_n, width), -1, dtype=torch.long)
    for r, members in enumerate(rows):
        at = 0
        for i in members:
            e, n = exs[i], lengths[i]
            input_ids[r, at : at + n] = torch.from_numpy(e["input_ids"])
            position_ids[r, at : at + n] = torch.arange(n)
            labels[r, at : at + n] = torch.from_numpy(e["labels"])
            labels[r, at] = IGNORE_INDEX  # never a target: the shift would pair it with the previous sequence
            weights[r, at : at + n] = torch.from_numpy(e["weights"])
            is_answer[r, at : at + n] = torch.from_numpy(e["is_answer"])
            seq_index[r, at : at + n] = i
            at += n
        # the row's tail: positions 0, 1, … again, so it is a separate sequence nobody attends to
        position_ids[r, at:] = torch.arange(width - at)
    return {
        "input_ids": input_ids,
        "position_ids": position_ids,
        "labels": labels,
        "weights": weights,
        "is_answer": is_answer,
        "sample_ids": list(sample_ids),
        "seq_index": seq_index,
        "packed": True,
    }


def unpack_targets(values: torch.Tensor, batch: dict[str, Any], width: int) -> torch.Tensor:
    """Per-target values of a packed causal batch (``[R, W−1]``, aligned with ``labels[:, 1:]``)
    → the padded batch's layout ``[B, width−1]`` (zeros where a padded batch has no token)."""
    seq = batch["seq_index"][:, 1:]
    pos = batch["position_ids"][:, 1:] - 1  # target at position p is predicted at p − 1
    real = (seq >= 0) & (pos >= 0)
    out = torch.zeros((len(batch["sample_ids"]), width - 1), dtype=values.dtype, device=values.device)
    out[seq[real], pos[real]] = values[real]
    return out
