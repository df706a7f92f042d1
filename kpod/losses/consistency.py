"""MCC-KD's consistency term (Chen et al., Findings of EMNLP 2023), engine-independent.

For one question with rationales ``r_a, r_b`` the student predicts the answer tokens after each
rationale; MCC-KD pulls the two answer distributions together with the bidirectional KL

    L_kl(a, b) = 1/|A| Σ_{j∈A} ½ [ KL(P_a,j ‖ P_b,j) + KL(P_b,j ‖ P_a,j) ],   P_·,j = softmax(z_·,j)

over the aligned answer positions ``A`` (released code: ``kl_div_loss``, temperature 1, no
stop-gradient, so both rationales' logits get gradient). The training loss is
``CE + α·L_kl`` (released script: ``α = 0.01`` for GSM8K/LLaMA-7B; the default argument is 0.1).

**Alignment** (docs/baselines.md): the released code needs one "common answer span" of equal
length in every rationale. kpod rebuilds the answer sentence from the gold answer, so the answer
tokens are the same text after every rationale; positions are aligned from the *end* over the
longest common suffix of the target ids (EOS included), which equals the whole span when the
tokenisations agree and drops a boundary token when they do not. A group with fewer than two
members, or an empty common suffix, is reported in ``skipped`` and contributes nothing.
With more than two rationales in a group, the term is the mean over all unordered pairs
(the released code samples two of them per step).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations

import torch
import torch.nn.functional as F

__all__ = ["AlignedGroups", "ConsistencyResult", "align_groups", "answer_consistency", "symmetric_kl"]


@dataclass
class ConsistencyResult:
    """Per-group values (0-dim tensors with grad), aligned position counts, skipped groups."""

    values: dict[str, torch.Tensor] = field(default_factory=dict)
    positions: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def mean(self) -> torch.Tensor | None:
        """Mean over the groups that have a value (``None`` if none has)."""
        if not self.values:
            return None
        return torch.stack(list(self.values.values())).mean()


def symmetric_kl(logits_a: torch.Tensor, logits_b: torch.Tensor) -> torch.Tensor:
    """``½[KL(P_a‖P_b) + KL(P_b‖P_a)]`` per position, ``[L, V] × [L, V] → [L]``, in fp32."""
    if logits_a.shape != logits_b.shape:
        raise ValueError(f"shapes differ: {tuple(logits_a.shape)} vs {tuple(logits_b.shape)}")
    la = F.log_softmax(logits_a.float(), dim=-1)
    lb = F.log_softmax(logits_b.float(), dim=-1)
    kl_ab = (la.exp() * (la - lb)).sum(-1)
    kl_ba = (lb.exp() * (lb - la)).sum(-1)
    return 0.5 * (kl_ab + kl_ba)


def _common_suffix(seqs: Sequence[torch.Tensor]) -> int:
    n = min(len(s) for s in seqs)
    k = 0
    while k < n and all(bool(s[-1 - k] == seqs[0][-1 - k]) for s in seqs[1:]):
        k += 1
    return k


@dataclass
class AlignedGroups:
    """Which rows and answer positions each group's term compares: ``rows[g]`` the group's rows,
    ``positions[g][i]`` the aligned target positions of ``rows[g][i]`` (all of one length);
    ``skipped`` the groups without a term and why. Computed from targets alone (no logits), so
    the engine can count the window's terms before its first backward."""

    rows: dict[str, list[int]] = field(default_factory=dict)
    positions: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


def align_groups(targets: torch.Tensor, answer_mask: torch.Tensor, groups: Sequence[str]) -> AlignedGroups:
    """Group rows by ``groups[b]`` and align each group's answer positions from the end over the
    longest common suffix of their target ids (see the module docstring)."""
    if targets.dim() != 2 or answer_mask.shape != targets.shape:
        raise ValueError(f"need targets/answer_mask [B,T]; got {tuple(targets.shape)}, {tuple(answer_mask.shape)}")
    if len(groups) != targets.size(0):
        raise ValueError(f"{len(groups)} group ids for {targets.size(0)} rows")
    rows: dict[str, list[int]] = {}
    for b, g in enumerate(groups):
        rows.setdefault(g, []).append(b)
    out = AlignedGroups()
    for g, members in rows.items():
        if len(members) < 2:
            out.skipped[g] = "single rationale"
            continue
        pos = [answer_mask[b].nonzero(as_tuple=True)[0] for b in members]
        k = _common_suffix([targets[b, p] for b, p in zip(members, pos)])
        if k == 0:
            out.skipped[g] = "no common answer tokens"
            continue
        out.rows[g] = members
        out.positions[g] = [p[len(p) - k :] for p in pos]
    return out


def answer_consistency(
    logits: torch.Tensor, targets: torch.Tensor, answer_mask: torch.Tensor, groups: Sequence[str]
) -> ConsistencyResult:
    """MCC-KD's term for every group of rows sharing a ``question_id``.

    ``logits`` ``[B, T, V]`` are aligned with ``targets`` ``[B, T]`` (for causal students: the
    already shifted pair, as in :func:`kpod.losses.base.per_token_nll`); ``answer_mask`` ``[B, T]``
    marks the answer positions used for consistency (the answer value, or the whole answer
    sentence: the caller's choice); ``groups[b]`` is row ``b``'s question id."""
    if logits.dim() != 3 or targets.shape != logits.shape[:2]:
        raise ValueError(
            f"need logits [B,T,V] and targets/answer_mask [B,T]; got {tuple(logits.shape)}, "
            f"{tuple(targets.shape)}, {tuple(answer_mask.shape)}"
        )
    aligned = align_groups(targets, answer_mask, groups)
    out = ConsistencyResult(skipped=dict(aligned.skipped))
    for g, members in aligned.rows.items():
        picked = [logits[b, p] for b, p in zip(members, aligned.positions[g])]
        pairs = [symmetric_kl(picked[i], picked[j]).mean() for i, j in combinations(range(len(members)), 2)]
        out.values[g] = torch.stack(pairs).mean()
        out.positions[g] = len(aligned.positions[g][0])
    return out
