"""The KPOD student loss (Eq. 15 plus the answer NLL) and the standard CoT loss (Eq. 1)."""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from kpod.losses.base import TokenLossBase, target_mask
from kpod.registry import LOSSES


@LOSSES
class KpodLoss(TokenLossBase):
    """Eq. 15: rationale-token NLL weighted by the significance weights ``w`` (raw sigmoid
    values, no renormalisation), plus the answer-sentence NLL with weight 1."""

    name: ClassVar[str] = "kpod"

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        weights: Literal["weighted", "uniform"] = Field(
            "weighted", description="uniform: the w.o.-sig ablation (weights ignored in the loss)"
        )
        answer_weight: float = Field(1.0, gt=0.0, description="weight of answer-sentence tokens")

    params: Params

    def reads_token_weights(self) -> bool:
        return self.params.weights == "weighted"

    def target_weights(
        self, batch: dict[str, torch.Tensor], is_encoder_decoder: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mask, sl = target_mask(batch["labels"], is_encoder_decoder)
        is_answer = batch["is_answer"][:, sl] & mask
        w = batch["weights"][:, sl].float() if self.params.weights == "weighted" else mask.float()
        w = torch.where(is_answer, torch.full_like(w, self.params.answer_weight), w)
        return w * mask, mask, is_answer


@LOSSES
class StdCotLoss(TokenLossBase):
    """Eq. 1: plain NLL on rationale and answer tokens alike (every target token weighs 1)."""

    name: ClassVar[str] = "std_cot"

    def target_weights(
        self, batch: dict[str, torch.Tensor], is_encoder_decoder: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mask, sl = target_mask(batch["labels"], is_encoder_decoder)
        return mask.float(), mask, batch["is_answer"][:, sl] & mask
