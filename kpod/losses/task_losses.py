"""Losses of the multi-task baselines: each task of a batch is a token mean with its own share.

* ``dsbs`` — distilling step-by-step (Hsieh et al., Findings of ACL 2023):
  ``L = L_label + λ·L_rationale``; the rationale task learns the rationale alone (its answer
  sentence, which kpod's template renders after every rationale, weighs 0).
* ``scott`` — SCOTT's student (Wang et al., ACL 2023):
  ``L = (1-α)·L_factual + α·L_counterfactual``.

The task of each row comes from the batch (``batch["tasks"]``, filled by the collator from each
record's ``meta["task"]`` by sample_id; a packed batch maps tokens to its sequences through
``seq_index``). Weights are ``share_k / N_k`` on task ``k``'s target tokens
(:func:`kpod.losses.task_mix.task_balanced_token_weights`), so the engine's ``Σw·ℓ / Σw`` is the
shares' weighted mean of the per-task token means — ``(L_label + λ·L_rationale) / (1 + λ)``:
the paper's loss up to the constant ``1/(1+λ)``. Only the weights differ from plain NLL, so both
run on the chunked-loss and packing fast paths (no full logits needed). docs/baselines.md §4, §8.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field

from kpod.losses.base import TokenLossBase, target_mask
from kpod.losses.task_mix import task_balanced_token_weights
from kpod.registry import LOSSES


class TaskShareLoss(TokenLossBase):
    """Per-task token means mixed by :meth:`shares`. Subclasses name their tasks and shares, and
    may leave some of a task's target tokens out of its mean (:meth:`answer_counts`)."""

    def shares(self) -> Mapping[str, float]:
        raise NotImplementedError(f"{type(self).__name__}.shares")

    def answer_counts(self, task: str) -> bool:
        """Whether the answer sentence of a ``task`` row is part of that task's target."""
        return True

    def target_weights(
        self, batch: dict[str, torch.Tensor], is_encoder_decoder: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mask, sl = target_mask(batch["labels"], is_encoder_decoder)
        is_answer = batch["is_answer"][:, sl] & mask
        tasks = list(batch.get("tasks") or [])
        if len(tasks) != len(batch["sample_ids"]):
            raise ValueError(f"loss {self.name!r}: the batch carries no task per sample (batch['tasks']); "
                             "build it with kpod's StageCollator")
        shares = self.shares()
        missing = sorted({t for t in tasks if t not in shares})
        if missing:
            raise ValueError(f"loss {self.name!r}: samples of task(s) {missing} (meta['task']) in the batch; "
                             f"this loss weighs tasks {sorted(shares)}: use data.format {self.name!r}")
        if batch.get("packed"):
            task_index = batch["seq_index"][:, sl].to(mask.device)
        else:
            task_index = torch.arange(mask.size(0), device=mask.device)[:, None].expand_as(mask)
        counted = mask.clone()
        for i, t in enumerate(tasks):
            if not self.answer_counts(t):
                counted &= ~((task_index == i) & is_answer)
        w = task_balanced_token_weights(counted, task_index, tasks, shares)
        return w, mask, is_answer


@LOSSES
class DsbsLoss(TaskShareLoss):
    """Distilling step-by-step: L_label + λ·L_rationale, each a token mean over its own task."""

    name: ClassVar[str] = "dsbs"
    data_format: ClassVar[str | None] = "dsbs"

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        rationale_weight: float = Field(
            1.0, gt=0.0, description="λ in L_label + λ·L_rationale (the release's --alpha 0.5 is λ = 1)"
        )

    params: Params

    def shares(self) -> Mapping[str, float]:
        return {"label": 1.0, "rationale": self.params.rationale_weight}

    def answer_counts(self, task: str) -> bool:
        return task != "rationale"  # the paper's rationale target is the rationale alone


@LOSSES
class ScottLoss(TaskShareLoss):
    """SCOTT's student: (1-α)·L_factual + α·L_counterfactual (answer-only on counterfactuals)."""

    name: ClassVar[str] = "scott"
    data_format: ClassVar[str | None] = "scott"

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        counterfactual_weight: float = Field(
            0.5, gt=0.0, lt=1.0, description="α in (1-α)·L_factual + α·L_counterfactual (the release's 0.5)"
        )

    params: Params

    def shares(self) -> Mapping[str, float]:
        a = self.params.counterfactual_weight
        return {"factual": 1.0 - a, "counterfactual": a}
