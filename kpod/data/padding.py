"""Padding: rows of different lengths → one rectangular tensor (every padded batch in kpod).

Rows are token-id lists, NumPy arrays or tensors; a row may carry trailing dimensions (e.g.
``[length, width]`` embeddings), which every row shares. Padding goes after the row (``right``:
training batches, encoder inputs) or before it (``left``: decoder-only generation, which
continues from the last real token).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch

Side = Literal["right", "left"]


def pad_to(
    rows: Sequence[Any],
    value: float,
    *,
    side: Side = "right",
    dtype: torch.dtype = torch.long,
    width: int | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """``[len(rows), width, *trailing]`` filled with ``value``, each row written at its side.

    ``width`` defaults to the longest row; a narrower ``width`` is an error.
    """
    if side not in ("right", "left"):
        raise ValueError(f"padding side {side!r}: use 'right' or 'left'")
    tensors = [torch.as_tensor(r) for r in rows]
    longest = max((len(t) for t in tensors), default=0)
    width = longest if width is None else width
    if width < longest:
        raise ValueError(f"padding width {width} is narrower than the longest row ({longest})")
    trailing = next((tuple(t.shape[1:]) for t in tensors if t.dim() > 1), ())
    out = torch.full((len(tensors), width, *trailing), value, dtype=dtype, device=device)
    for i, t in enumerate(tensors):
        n = len(t)
        if n == 0:
            continue
        if side == "left":
            out[i, width - n :] = t
        else:
            out[i, :n] = t
    return out


def lengths_mask(
    lengths: Sequence[int],
    width: int,
    *,
    side: Side = "right",
    dtype: torch.dtype = torch.long,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """``[len(lengths), width]``: 1 on each row's first (``right``) or last (``left``) ``n`` places."""
    pos = torch.arange(width, device=device).unsqueeze(0)
    n = torch.as_tensor(list(lengths), dtype=torch.long, device=device).unsqueeze(1)
    real = pos < n if side == "right" else pos >= width - n
    return real.to(dtype)


def pad_batch(
    rows: Sequence[Any],
    pad_id: int,
    *,
    side: Side = "right",
    width: int | None = None,
    mask_dtype: torch.dtype = torch.long,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-id rows → ``(input_ids, attention_mask)``, both ``[len(rows), width]``."""
    ids = pad_to(rows, pad_id, side=side, width=width, device=device)
    mask = lengths_mask([len(r) for r in rows], ids.shape[1], side=side, dtype=mask_dtype, device=device)
    return ids, mask
