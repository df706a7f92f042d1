"""Token weights that give each task of a multi-task batch its own share of the loss.

Distilling step-by-step (Hsieh et al., Findings of ACL 2023; released ``TaskPrefixTrainer``)
computes ``α·mean(ℓ_label) + (1-α)·mean(ℓ_rationale)``, each a token mean over its own task's
targets in the batch. kpod's engine divides ``Σ w·ℓ`` by ``Σ w``; giving every target token of
task ``k`` the weight ``share_k / N_k`` (``N_k`` = that task's target tokens in the micro-batch)
makes ``Σ w = 1`` and the engine's value equal to the paper's. Exact when every micro-batch holds
both tasks of each question (``train.group_by_question``), as the released collator does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

__all__ = ["task_balanced_token_weights", "task_balanced_weights"]


def task_balanced_weights(
    mask: torch.Tensor, tasks: Sequence[str], shares: Mapping[str, float]
) -> torch.Tensor:
    """``[B, T]`` fp32 weights: ``shares[task]/N_task`` on row ``b``'s target tokens, 0 elsewhere.

    ``mask`` is the target mask ``[B, T]``; ``tasks[b]`` names row ``b``'s task. A task present
    in the batch without target tokens, or a task without a share, is an error; the shares of the
    tasks present are renormalised to sum to 1 (a batch holding only one task trains it alone)."""
    if len(tasks) != mask.size(0):
        raise ValueError(f"{len(tasks)} task names for {mask.size(0)} rows")
    rows = torch.arange(mask.size(0), device=mask.device)[:, None].expand_as(mask)
    return task_balanced_token_weights(mask, rows, tasks, shares)


def task_balanced_token_weights(
    mask: torch.Tensor, task_index: torch.Tensor, tasks: Sequence[str], shares: Mapping[str, float]
) -> torch.Tensor:
    """:func:`task_balanced_weights` with the task given per token: ``tasks[task_index[b, t]]``
    is token ``(b, t)``'s task (a packed row holds several sequences; −1 marks a token of none,
    which must not be a target)."""
    unknown = sorted(set(tasks) - set(shares))
    if unknown:
        raise KeyError(f"no loss share for task(s) {unknown}; shares given for {sorted(shares)}")
    if bool((mask & (task_index < 0)).any()):
        raise ValueError("a target token belongs to no task")
    present = sorted({tasks[i] for i in task_index[mask].unique().tolist()} if bool(mask.any()) else set(tasks))
    total_share = sum(shares[t] for t in present)
    if total_share <= 0:
        raise ValueError(f"shares of the tasks in the batch sum to {total_share}")
    m = mask.float()
    w = torch.zeros_like(m)
    for t in sorted(set(tasks)):
        ids = torch.tensor([i for i, x in enumerate(tasks) if x == t], device=mask.device)
        of_task = torch.isin(task_index, ids)
        n = m[of_task].sum()
        if n == 0:
            raise ValueError(f"task {t!r} has no target tokens in this batch")
        w[of_task] = m[of_task] * (shares[t] / total_share) / n
    return w
