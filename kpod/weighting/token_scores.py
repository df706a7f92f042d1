"""Per-token NLL and entropy of a causal model on each record's rationale, as character spans.

Shared by the strategies that score the student's own tokens with a model: ``excess_loss``
(student and reference NLL) and the dynamic strategies' *snapshot* (their signal under the
initial student, for ``kpod weights`` and ``--compare``). The pass is the training's teacher-forced
forward over the full serialisation (every step target, stage 0), with the chunked head
(:func:`kpod.losses.chunked.linear_token_stats`): no ``[B, T, V]`` logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from kpod.data.padding import pad_batch, pad_to
from kpod.data.records import Record
from kpod.data.template import PromptTemplate
from kpod.data.tokenize import IGNORE_INDEX, encode_causal_many


@dataclass
class RationaleStats:
    """One record's rationale target tokens: anchors (relative to the rationale), NLL, entropy."""

    anchors: np.ndarray
    nll: np.ndarray
    entropy: np.ndarray | None


@torch.no_grad()
def rationale_token_stats(
    model: Any,
    tokenizer: Any,
    records: list[Record],
    template: PromptTemplate,
    device: Any,
    batch_size: int = 32,
    entropy: bool = False,
    chunk_tokens: int = 2048,
) -> dict[str, RationaleStats]:
    """NLL (and entropy) of every rationale token under ``model`` (causal), by sample_id."""
    from kpod.losses.chunked import head_of, head_returns_hidden, linear_token_stats

    if head_of(model) is None:
        raise ValueError("scoring tokens needs a model with an LM head (get_output_embeddings)")
    sers = [template.serialize(r) for r in records]
    encs = encode_causal_many(tokenizer, sers)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    was_training = model.training
    model.eval()
    out: dict[str, RationaleStats] = {}
    try:
        for s in range(0, len(records), batch_size):
            part = range(s, min(s + batch_size, len(records)))
            rat = [(encs[i].anchors >= sers[i].rationale_start) & (encs[i].anchors < sers[i].answer_span[0]) for i in part]
            ids, att = pad_batch([encs[i].input_ids for i in part], pad, device=device)
            labels = pad_to([np.where(m, encs[i].input_ids, IGNORE_INDEX) for i, m in zip(part, rat)], IGNORE_INDEX)
            with head_returns_hidden(model) as head:
                hidden = model(input_ids=ids, attention_mask=att, use_cache=False).logits
            nll, ent, _, _ = linear_token_stats(hidden, head.weight, head.bias, labels.to(device), False,
                                                chunk_tokens, entropy=entropy)
            for row, (i, m) in enumerate(zip(part, rat)):
                pos = np.nonzero(m)[0] - 1  # target at position p is predicted at p − 1 (shifted)
                anchors = encs[i].anchors[m] - sers[i].rationale_start
                out[records[i].sample_id] = RationaleStats(
                    anchors=anchors,
                    nll=nll[row, pos].cpu().numpy().astype(np.float64),
                    entropy=ent[row, pos].cpu().numpy().astype(np.float64) if ent is not None else None,
                )
    finally:
        model.train(was_training)
    return out


def spans_from_token_scores(anchors: np.ndarray, scores: np.ndarray, length: int) -> list[tuple[int, int, float]]:
    """Token scores → character spans ``[anchor, next anchor)`` (the last over the rest of the
    rationale). Tokens sharing an anchor (a whitespace-only token before a visible one) are one
    position, and take the last one's score: the collator weighs a token by its anchor."""
    if len(anchors) == 0:
        return []
    last: dict[int, float] = {}
    for a, v in zip(np.asarray(anchors).tolist(), np.asarray(scores).tolist()):
        last[int(a)] = float(v)
    starts = sorted(last)
    ends = [*starts[1:], max(length, starts[-1] + 1)]
    return [(a, e, last[a]) for a, e in zip(starts, ends)]
