"""``excess_loss``: tokens scored by how much more the student loses on them than a reference model.

Rho-1 (Lin et al. 2024, "Not All Tokens Are What You Need") and Token Cleaning (Pang et al.
2025) score each token by its *excess loss* ``L_θ(t) − L_ref(t)``: a token a reference model
trained on good data predicts well and the student does not is learnable and worth training on;
a token both find hard (noise) or both find easy (already known) is not. Rho-1 keeps the top
share (``select: {policy: top_k, k: 0.6}``); under ``policy: weight`` the weight is
``σ((L_θ(t) − L_ref(t)) / temperature)``, 0.5 where the two agree.

This is the *static* version: scored once, before training, with the initial student and the
reference (two teacher-forced passes over the training set, no ``[B, T, V]`` logits), returned as
character spans. The reference must share the student's tokenizer (token losses are compared
position by position). ``reference`` is a model directory or hub id, or a run directory (its
``model/``: e.g. a std_cot run of the same recipe). The student's pre-trained base cannot serve:
it *is* the initial student, so every excess loss is 0 — refused with that reason. (A dynamic
version would score the current student at each step at the cost of one reference forward per
micro-batch; not implemented.)
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from kpod.data.records import CharSpanWeights, DataError
from kpod.registry import WEIGHTING
from kpod.weighting.base import WeightingContext, WeightingStrategy


def load_reference(reference: str) -> Any:
    """The reference model: ``RUN_DIR`` (its ``model/``), a saved model directory, or a hub id."""
    from kpod.models.student import load_model_ref

    return load_model_ref(reference, "weighting.params.reference")


def excess_weights(student_nll: np.ndarray, reference_nll: np.ndarray, temperature: float) -> np.ndarray:
    """``σ((L_θ − L_ref) / temperature)`` per token."""
    return 1.0 / (1.0 + np.exp(-(student_nll - reference_nll) / temperature))


@WEIGHTING
class ExcessLoss(WeightingStrategy):
    """Static: each token's excess loss ``L_θ(t) − L_ref(t)`` of the initial student over a reference
    model, scored once; weight ``σ(excess / temperature)``, or with ``top_k`` the top share kept
    (Rho-1: Lin et al. 2024, "Not All Tokens Are What You Need"; Token Cleaning: Pang et al. 2025)."""

    name: ClassVar[str] = "excess_loss"

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        reference: str = Field(..., description="reference model: a run directory, a model directory or a hub id "
                                                 "(same tokenizer as the student); {seed} is replaced by the recipe's seed")
        temperature: float = Field(1.0, gt=0.0, description="policy weight: w = sigmoid(excess loss / temperature)")
        batch_size: int = Field(32, ge=1, description="sequences per scoring pass")

    params: Params
    _loaded: Any = None  # (reference path, the loaded reference): the key and the pass share it

    def cache_inputs(self, ctx: WeightingContext) -> dict[str, Any] | None:
        """Scored once and cached (kpod/weighting/cached.py): keyed by every weight of the initial
        student and of the reference."""
        from kpod.cache import model_digest

        student, _ = ctx.student_and_template(self.name)
        return {"student": model_digest(student.model), "reference": model_digest(self._reference(ctx).model)}

    def _reference(self, ctx: WeightingContext) -> Any:
        reference = self.params.reference.replace("{seed}", str(ctx.seed))
        if self._loaded is None or self._loaded[0] != reference:
            self._loaded = (reference, load_reference(reference))
        return self._loaded[1]

    def compute(self, ctx: WeightingContext) -> CharSpanWeights | None:
        from kpod.weighting.token_scores import rationale_token_stats, spans_from_token_scores

        student, template = ctx.student_and_template(self.name)
        if student.is_encoder_decoder:
            raise DataError("weighting.name: excess_loss scores causal students only")
        reference = self.params.reference.replace("{seed}", str(ctx.seed))
        ref = self._reference(ctx)
        if ref.is_encoder_decoder or ref.tokenizer.get_vocab() != student.tokenizer.get_vocab():
            raise DataError(
                f"weighting.params.reference: {reference} must be a causal model with the "
                "student's tokenizer (excess loss compares the two models token by token)"
            )
        args = (ctx.records, template, ctx.device, self.params.batch_size)
        mine = rationale_token_stats(student.model.to(ctx.device), student.tokenizer, *args)
        theirs = rationale_token_stats(ref.model.to(ctx.device), student.tokenizer, *args)
        out: CharSpanWeights = {}
        diffs = []
        for r in ctx.records:
            a, b = mine[r.sample_id], theirs[r.sample_id]
            diff = a.nll - b.nll
            diffs.append(diff)
            out[r.sample_id] = spans_from_token_scores(a.anchors, excess_weights(a.nll, b.nll, self.params.temperature),
                                                       len(r.rationale))
        flat = np.concatenate(diffs) if diffs else np.zeros(0)
        if flat.size and float(np.abs(flat).max()) < 1e-6:
            raise DataError(
                f"weighting.params.reference: {reference} predicts exactly as the initial student "
                "(every excess loss is 0; the pre-trained base is the initial student): use a trained reference"
            )
        self.report = {
            "reference": reference,
            "excess_loss_mean": round(float(flat.mean()), 4) if flat.size else 0.0,
            "positive_share": round(float((flat > 0).mean()), 4) if flat.size else 0.0,
        }
        return out
