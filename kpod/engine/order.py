"""The data order: which sample_ids form each micro-batch of an epoch, and which rank takes it.

Every order here is a pure function of (seed, epoch) and the training ids, so a resumed run
needs only its position in the epoch. Three ways to cut the epoch into micro-batches:

- plain: the shuffled ids, ``batch_size`` at a time;
- ``train.group_by_length``: similar lengths together (:func:`length_grouped`);
- ``train.group_by_question``: whole questions together (:func:`question_grouped`).

:func:`rank_share` then deals whole micro-batches to ranks, so a micro-batch is never split.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch

# the epoch generator's seed: seed * _SEED_STRIDE + epoch (+ _BATCH_ORDER_SALT for batch shuffles)
_SEED_STRIDE = 1_000_003
_BATCH_ORDER_SALT = 7_919


def epoch_order(ids: Sequence[str], seed: int, epoch: int) -> list[str]:
    """Deterministic shuffle of ``ids`` (sorted) per (seed, epoch)."""
    g = torch.Generator().manual_seed(seed * _SEED_STRIDE + epoch)
    perm = torch.randperm(len(ids), generator=g).tolist()
    return [ids[i] for i in perm]


def plain(order: Sequence[str], batch_size: int) -> list[list[str]]:
    return [list(order[i : i + batch_size]) for i in range(0, len(order), batch_size)]


def length_grouped(
    order: Sequence[str], length: Callable[[str], int], batch_size: int, seed: int, epoch: int
) -> list[list[str]]:
    """``train.group_by_length``: the shuffled order cut into groups of 50 micro-batches, each
    sorted by length (characters of the serialised example) and cut into micro-batches, whose
    order is then shuffled (seeded by seed and epoch): micro-batches of similar lengths, little
    padding, no length trend over the epoch (the usual ``group_by_length`` of HF Trainer)."""
    group = 50 * batch_size
    mbs: list[list[str]] = []
    for g0 in range(0, len(order), group):
        chunk = sorted(order[g0 : g0 + group], key=length, reverse=True)
        mbs += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    gen = torch.Generator().manual_seed(seed * _SEED_STRIDE + epoch + _BATCH_ORDER_SALT)
    return [mbs[i] for i in torch.randperm(len(mbs), generator=gen).tolist()]


def question_grouped(
    ids: Sequence[str], question_of: Mapping[str, str], batch_size: int, seed: int, epoch: int
) -> list[list[str]]:
    """``train.group_by_question``: the questions (sorted question_ids) shuffled per (seed, epoch),
    each question's records (sorted sample_ids) kept together; questions fill a micro-batch up to
    ``batch_size`` records, and a question that does not fit starts the next one (a question of
    more than ``batch_size`` records is a micro-batch of its own). With one record per question
    and question_id = sample_id this is exactly the plain order."""
    groups: dict[str, list[str]] = {}
    for sid in sorted(ids):
        groups.setdefault(question_of[sid], []).append(sid)
    mbs: list[list[str]] = []
    current: list[str] = []
    for qid in epoch_order(sorted(groups), seed, epoch):
        group = groups[qid]
        if current and len(current) + len(group) > batch_size:
            mbs.append(current)
            current = []
        current = current + group
        if len(current) >= batch_size:
            mbs.append(current)
            current = []
    if current:
        mbs.append(current)
    return mbs


def rank_share(mbs: list[list[str]], world: int, rank: int) -> list[list[str] | None]:
    """Rank ``rank``'s micro-batches: ``rank, rank + W, rank + 2W, …`` of the global list, so a
    window of k micro-batches on W ranks holds exactly the kW micro-batches one process with
    ``grad_accum = kW`` would see, and a micro-batch (a whole question, too) stays on one rank.
    Padded with ``None`` to a multiple of W (every rank must run the same number of backward
    passes); a ``None`` is a zero-weight pass, so no sample is dropped or counted twice."""
    if world == 1:
        return list(mbs)
    padded: list[list[str] | None] = [*mbs, *[None] * (-len(mbs) % world)]
    return padded[rank::world]
