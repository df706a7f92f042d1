"""Per-sample statistics an adaptive scheduler asks for, measured at an epoch end.

``output_nll``: mean NLL of a sample's target part at the epoch's stage ``c`` (the tokens the
collator's labels mark: steps from ``c`` on, the answer sentence, EOS). ``step_nll``: mean NLL
of each rationale step with the full rationale as target (c = 0); tokens belong to steps by
their anchors, as for Eq. 8 (:func:`kpod.difficulty.step_difficulty_from_nll` with uniform
within-step weights is exactly the mean).

Causal students: the NLL of each token does not depend on ``c`` (only the label mask moves), so
one teacher-forced pass at c = 0 gives both. Encoder–decoder students: the given steps move
into the encoder, so ``output_nll`` needs its own pass at the epoch's stage.

The caller runs the model in eval mode without gradient; under several ranks each measures a
share and :func:`merge_shares` joins the gathered shares. Every rank runs the same number of
forward passes (``n_batches``, filler batches discarded): FSDP and DDP forwards are collective.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from kpod.data.collate import StageCollator
from kpod.data.tokenize import CharWeights
from kpod.difficulty import step_difficulty_from_nll
from kpod.schedulers.base import EPOCH_STAT_NAMES

# batch → per-token NLL [B, T'] aligned with the (shifted, for causal students) labels
TokenNll = Callable[[dict[str, Any]], torch.Tensor]
Shares = tuple[dict[str, float], dict[str, list[float]]]

_UNIFORM = CharWeights(None)


def check_wanted(wanted: frozenset[str], scheduler: str) -> None:
    unknown = set(wanted) - EPOCH_STAT_NAMES
    if unknown:
        raise ValueError(
            f"scheduler {scheduler!r}: epoch_stats names {sorted(unknown)}; "
            f"the engine gives {sorted(EPOCH_STAT_NAMES)}"
        )


def n_batches(n_samples: int, world: int, batch_size: int) -> int:
    """Forward passes per rank: enough for the largest share."""
    share = -(-n_samples // world)
    return -(-share // batch_size)


def measure(
    token_nll: TokenNll,
    collator: StageCollator,
    ids: Sequence[str],
    given: dict[str, int],
    wanted: frozenset[str],
    batch_size: int,
    n_batches: int = 0,
) -> Shares:
    """``(output_nll, step_nll)`` of ``ids`` (each filled only if ``wanted``); at least
    ``n_batches`` batches are run, the extra ones on a filler and discarded."""
    if not ids:
        raise ValueError("measure: no sample_ids (every rank needs at least one for its filler batches)")
    ed = collator.is_encoder_decoder
    sl = slice(0, None) if ed else slice(1, None)
    order = sorted(ids, key=lambda s: (collator.length(s), s))  # similar lengths: little padding
    chunks: list[list[str] | None] = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    chunks += [None] * (n_batches - len(chunks))
    out_nll: dict[str, float] = {}
    step_nll: dict[str, list[float]] = {}
    for chunk in chunks:
        real = chunk is not None
        sids = chunk if chunk is not None else order[:1]
        stage = {sid: given[sid] for sid in sids}
        full_nll = None
        if "step_nll" in wanted or not ed:  # causal: one pass at c = 0 gives both statistics
            full_nll = token_nll(collator(sids, None)).float().cpu().numpy()
        if "output_nll" in wanted:
            batch = collator(sids, stage)
            nll = full_nll if full_nll is not None and not ed else token_nll(batch).float().cpu().numpy()
            mask = (batch["labels"][:, sl] != -100).numpy()[:, : nll.shape[1]]
            if real:
                for b, sid in enumerate(sids):
                    out_nll[sid] = float((nll[b] * mask[b]).sum() / mask[b].sum())
        if "step_nll" in wanted and real:
            assert full_nll is not None
            for b, sid in enumerate(sids):
                anchors = np.asarray(collator.target_anchors(sid, 0))[sl]
                step_nll[sid] = step_difficulty_from_nll(
                    full_nll[b, : len(anchors)], anchors, collator.ser[sid].steps, _UNIFORM, "mean"
                )
    return out_nll, step_nll


def merge_shares(shares: list[Shares], ids: Sequence[str], wanted: frozenset[str]) -> Shares:
    """Every rank's share joined; each wanted statistic must cover ``ids`` exactly once."""
    out_nll: dict[str, float] = {}
    step_nll: dict[str, list[float]] = {}
    for o, s in shares:
        out_nll.update(o)
        step_nll.update(s)
    for name, got in (("output_nll", out_nll), ("step_nll", step_nll)):
        if name in wanted and set(got) != set(ids):
            raise RuntimeError(f"epoch statistics: {name} covers {len(got)} of {len(ids)} training samples")
    return out_nll, step_nll


def measure_on_ranks(
    model: torch.nn.Module,
    token_nll: TokenNll,
    collator: StageCollator,
    ids: Sequence[str],
    given: dict[str, int],
    wanted: frozenset[str],
    batch_size: int,
    accelerator: Any,
) -> Shares:
    """:func:`measure` over every sample of ``ids``: each rank a share, gathered to all; the
    model in eval mode without gradient, its training mode restored."""
    world, rank = accelerator.num_processes, accelerator.process_index
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            part = measure(token_nll, collator, ids[rank::world], given, wanted, batch_size,
                           n_batches(len(ids), world, batch_size))
    finally:
        model.train(was_training)
    parts = [part]
    if world > 1:
        from accelerate.utils import gather_object

        parts = gather_object([part])
    return merge_shares(parts, ids, wanted)
