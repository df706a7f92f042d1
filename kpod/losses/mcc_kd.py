"""MCC-KD's training loss (Chen et al., Findings of EMNLP 2023): CE on every rationale plus
α × the consistency term between the student's answer distributions after a question's
different rationales (:mod:`kpod.losses.consistency`; docs/baselines.md §5).

Per token the loss is plain CE (every target token weighs 1, as ``std_cot``); the consistency
term is the loss's ``extra``: per micro-batch, α × the *sum* over its questions of
``L_kl(q)`` (mean over the question's rationale pairs and aligned answer positions), and
:meth:`MccKdLoss.extra_count` the number of those questions. The engine divides each micro-batch's
extra by the window's total count (all ranks), so one optimizer step minimises

    Σ w·ℓ / Σ w  +  α · (1/|Q|) Σ_{q∈Q} L_kl(q)         (Q: the window's questions with a term)

exactly, whatever the accumulation or the number of ranks. A question with a single rationale
in the data (or no common answer tokens) has no term: it counts 0 and adds 0.

The term needs every rationale of a question in one micro-batch (``train.group_by_question:
true``, which never splits a question); :meth:`extra_count` raises, naming that field, as soon as
a micro-batch holds only some of a question's rationales (the pairs across micro-batches would be
silently lost). On data with one rationale per question nothing can be split: every question is
alone, has no term, and the loss equals ``std_cot`` (so ``--vary loss`` runs it on any recipe).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from kpod.losses.base import TokenLoss, TokenLossBase, per_token_nll, target_mask
from kpod.losses.consistency import align_groups, answer_consistency
from kpod.registry import LOSSES


@LOSSES
class MccKdLoss(TokenLossBase):
    """CE on each rationale + α · the bidirectional KL between a question's answer distributions."""

    name: ClassVar[str] = "mcc_kd"
    needs_full_logits: ClassVar[str | None] = (
        "the mcc_kd loss compares full answer-token distributions across the rows of a question"
    )

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        alpha: float = Field(0.01, ge=0.0, description="weight of the consistency term (release script: 0.01)")
        span: Literal["answer_value", "answer_sentence"] = Field(
            "answer_value", description="answer positions compared: the answer value's tokens (the release's "
            "answer span) or the whole answer sentence with EOS"
        )

    params: Params

    def target_weights(
        self, batch: dict[str, Any], is_encoder_decoder: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mask, sl = target_mask(batch["labels"], is_encoder_decoder)
        return mask.float(), mask, batch["is_answer"][:, sl] & mask

    def _answer_mask(self, batch: dict[str, Any], is_encoder_decoder: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(shifted targets, answer positions used for consistency), both ``[B, T']``."""
        mask, sl = target_mask(batch["labels"], is_encoder_decoder)
        key = "answer_value" if self.params.span == "answer_value" else "is_answer"
        if key not in batch or "question_ids" not in batch:
            raise ValueError(f"loss mcc_kd: the batch has no {key!r} / 'question_ids' (a padded StageCollator batch "
                             "is needed; packing is not supported)")
        return batch["labels"][:, sl], batch[key][:, sl].to(mask.device) & mask

    def extra_count(self, batch: dict[str, Any], is_encoder_decoder: bool) -> int:
        """Questions of this micro-batch with a consistency term (needs no logits). Raises if a
        question's rationales are split across micro-batches."""
        groups, sizes = batch["question_ids"], batch["question_sizes"]
        held: dict[str, int] = {}
        for g in groups:
            held[g] = held.get(g, 0) + 1
        for g, size in zip(groups, sizes):
            if held[g] != size:
                raise ValueError(
                    f"loss mcc_kd: question {g!r} has {held[g]} of its {size} rationales in this micro-batch "
                    "(the consistency term needs all of them together); set train.group_by_question: true"
                )
        targets, answer = self._answer_mask(batch, is_encoder_decoder)
        return len(align_groups(targets, answer, groups).rows)

    def __call__(self, logits: torch.Tensor, batch: dict[str, Any], is_encoder_decoder: bool) -> TokenLoss:
        nll, _, _ = per_token_nll(logits, batch["labels"], is_encoder_decoder)
        w, mask, is_answer = self.target_weights(batch, is_encoder_decoder)
        targets, answer = self._answer_mask(batch, is_encoder_decoder)
        result = answer_consistency(logits[:, : targets.size(1)] if not is_encoder_decoder else logits,
                                    targets, answer, batch["question_ids"])
        total = torch.stack(list(result.values.values())).sum() if result.values else logits.sum() * 0.0
        return TokenLoss(nll=nll, weight=w, mask=mask, is_answer=is_answer, extra=self.params.alpha * total)
