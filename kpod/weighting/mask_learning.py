"""``mask_learning``: keypoint token weights learned by mask learning (paper §3.3, Eqs. 2–7).

Generator: the student's input embedding (frozen) → one trainable self-attention
layer (residual + LayerNorm, padding mask) → MLP (width → 256 → 1, GELU) → sigmoid gives
``w_j``. A 2-class straight-through Gumbel-softmax draws the mask ``m_j`` (P(m_j = 1) = w_j for
every temperature), applied in embedding space: ``ṽ_j = m_j v_j + (1 − m_j) v_mask`` with a
learned ``v_mask`` (initialised to the mean embedding). An answer predictor reads the unmasked
``Q: {x} A: {trigger}`` embeddings followed by a masked rationale prefix through
``inputs_embeds`` (a linear projection when widths differ) and must produce the answer.
Objective: ``L_p + α·L_m`` (Eq. 7), ``L_m`` the mean kept ratio (``sum`` is Eq. 6;
docs/method.md, 'Token weighting', says why the mean).
After fitting, ``w`` is exported deterministically (no noise) for every training rationale.
This module is the strategy (its params, the models it builds, its cache key); the fit loop and
the export are :class:`kpod.weighting.mask_fit.MaskFit`.
"""

from __future__ import annotations

import copy
import time
from typing import Any, ClassVar, Literal

import torch
import torch.nn as nn
from pydantic import BaseModel, ConfigDict, Field, model_validator

from kpod.cache import model_digest, tensor_digest
from kpod.data.packing import pack_row_factor, packing_problem
from kpod.models.config import TinyModelConfig
from kpod.models.student import load_pretrained, pretrained_config
from kpod.models.tiny import build_tiny
from kpod.registry import WEIGHTING
from kpod.weighting.base import CharSpanWeights, WeightingContext, WeightingStrategy
from kpod.weighting.mask_fit import MaskFit
from kpod.weighting.mask_model import MaskModel
from kpod.weighting.tokens import rationale_tokens_many


class PredictorTiny(TinyModelConfig):
    """A tiny answer predictor built from a config (same fields and checks as a tiny student)."""

    hidden_size: int = Field(64, gt=0)
    num_layers: int = Field(2, gt=0)
    intermediate_size: int = Field(128, gt=0)
    max_positions: int = Field(1024, gt=0)


@WEIGHTING
class MaskLearning(WeightingStrategy):
    name: ClassVar[str] = "mask_learning"
    not_in_key: ClassVar[frozenset[str]] = frozenset({"cache", "log_every"})

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        predictor: str = Field(
            "google/flan-t5-large",
            description="answer predictor: HF id/path (paper: FlanT5-Large), tiny:t5 / tiny:llama "
            "(from scratch), or 'student' (a copy of the student as initialised, e.g. its pre-trained base)",
        )
        predictor_gguf_file: str | None = Field(
            None,
            description="a GGUF checkpoint file inside `predictor` (de-quantized once and cached, as student.gguf_file)",
        )
        predictor_dtype: Literal["fp32", "bf16", "fp16", "auto"] = Field(
            "fp32", description="dtype of a pre-trained predictor's weights (as student.dtype)"
        )
        predictor_tiny: PredictorTiny = PredictorTiny()
        alpha: float = Field(0.5, ge=0.0, description="weight of the mask-ratio loss (Eq. 7)")
        alpha_warmup: float = Field(
            0.0, ge=0.0, le=1.0,
            description="fraction of steps over which alpha ramps up from 0 (0 = paper: constant); "
            "lets a predictor trained from scratch learn to read before sparsity pressure starts",
        )
        ratio_loss: Literal["mean", "sum"] = Field("mean", description="L_m: kept ratio (mean) or Eq. 6's sum")
        temperature: float = Field(1.0, gt=0.0, description="Gumbel-softmax temperature")
        num_prefixes: int = Field(3, ge=1, description="prefixes per example (full rationale included)")
        prefixes: Literal["sampled", "all"] = "sampled"
        answer_prefix: Literal["none", "also", "only"] = Field(
            "none",
            description="the prefix that ends right before the rationale's last mention of the answer "
            "(a token-level cut of Eq. 5, where the predictor must compute the answer, not copy it): "
            "none, also (added to the step prefixes) or only",
        )
        init_keep: float | None = Field(
            None, gt=0.0, lt=1.0,
            description="initial keep probability (sets the generator's output bias); None: 0.5",
        )
        learn_mask_embedding: bool = Field(
            True,
            description="train v_mask, as the paper does; false keeps it at the mean input embedding (docs/method.md)",
        )
        heads: int = Field(8, ge=1)
        mlp_hidden: int = Field(256, ge=1)
        projection: Literal["auto", "always"] = "auto"
        freeze_predictor: bool = Field(
            False,
            description="keep the predictor's weights fixed while the masks are learned (after the "
            "predictor warm-up, which still fits it), so it cannot learn to do without the rationale",
        )
        epochs: float = Field(3.0, gt=0, description="passes over the training rationales")
        max_steps: int | None = Field(None, ge=1, description="cap on optimisation steps")
        predictor_warmup_steps: int = Field(
            0, ge=0,
            description="steps fitting the predictor on unmasked rationales before mask learning "
            "(0 = paper, whose predictor is pre-trained; a tiny predictor from scratch needs them)",
        )
        max_examples: int | None = Field(None, ge=1, description="fit on at most this many rationales")
        batch_size: int = Field(8, ge=1)
        lr: float = Field(1e-4, gt=0, description="LR of the new layers (generator, mask, projection)")
        predictor_lr: float = Field(5e-5, gt=0)
        grad_clip: float = Field(1.0, gt=0)
        log_every: int = Field(25, ge=1)
        cache: bool = Field(True, description="reuse weights cached under data + params + seed")
        revision: str | None = None
        trust_remote_code: bool = False

        @model_validator(mode="after")
        def _gguf_needs_pretrained(self) -> MaskLearning.Params:
            if self.predictor_gguf_file is not None and self.predictor.startswith("tiny:"):
                raise ValueError("predictor_gguf_file: a tiny predictor is built from a config; name a model path or hub id")
            return self

    params: Params

    # ------------------------------------------------------------------ public
    def compute(self, ctx: WeightingContext) -> CharSpanWeights:
        student, template = ctx.student_and_template(self.name)
        t0 = time.perf_counter()
        toks = rationale_tokens_many(list(ctx.records), template, student.tokenizer)
        model, pred_tok = self._build(student, student.model.get_input_embeddings())
        model.to(ctx.device)
        packing_reason = self._resolve_packing(model, ctx.packing, ctx.device)
        fitter = MaskFit(self.params)
        fit = fitter.fit(model, toks, pred_tok, ctx.device, ctx.seed, ctx.metrics, ctx.reporter)
        weights = fitter.export(model, toks, ctx.device)
        self.report = {**fit, "predictor_packing": packing_reason, "fit_seconds": round(time.perf_counter() - t0, 2)}
        return weights

    def cache_inputs(self, ctx: WeightingContext) -> dict[str, Any] | None:
        """The student's embedding and vocabulary (the generator reads them), every weight of the
        predictor when it is a copy of the student, and whether its passes are packed (packed
        passes change the fit's float rounding). Packing is keyed as ``train.packing`` and the
        predictor's kind ask for it: whether the predictor then passes the probe follows from
        what the key holds (the predictor) and the device, which no key holds."""
        if not self.params.cache:
            return None
        student, _ = ctx.student_and_template(self.name)
        out = self.model_digests(student)
        if self._predictor_may_pack(ctx.packing, student):  # a padded fit keeps the key it had before packing existed
            out["predictor_packed"] = True
        return out

    def _predictor_may_pack(self, setting: bool | str, student: Any) -> bool:
        """Before the predictor is built: ``train.packing`` is not false and it is causal (a
        pre-trained one's config tells, without its weights)."""
        p = self.params
        if setting is False:
            return False
        if p.predictor == "student":
            return not student.is_encoder_decoder
        if p.predictor.startswith("tiny:"):
            return p.predictor == "tiny:llama"  # build_tiny: tiny:llama, else a T5
        _, _, config = pretrained_config(p.predictor, p.revision, p.trust_remote_code, p.predictor_gguf_file,
                                         "weighting.params.predictor", "weighting.params.predictor_gguf_file")
        return not config.is_encoder_decoder

    def _resolve_packing(self, model: MaskModel, setting: bool | str, device: torch.device) -> str:
        """``train.packing`` for the answer predictor's passes (the weight generator stays padded:
        docs/scaling.md): on where the predictor is causal and passes the training's probe;
        otherwise off with the reason, also under ``true`` (the setting names the student)."""
        if setting is False:
            return "off (train.packing: false)"
        vocab = model.predictor.get_input_embeddings().num_embeddings
        problem = packing_problem(model.predictor, model.is_encoder_decoder, vocab, device, "answer predictor")
        if problem is not None:
            return f"off ({problem})"
        model.packing, model.pack_rows_of = True, pack_row_factor(model.predictor)
        return "on"

    def model_digests(self, student: Any) -> dict[str, Any]:
        """What the weights depend on besides data and params: the student's embedding and
        vocabulary (the generator reads them) and, when the predictor is a copy of the student,
        every weight of it."""
        emb = student.model.get_input_embeddings().weight
        out: dict[str, Any] = {"embedding": tensor_digest(emb), "vocab": len(student.tokenizer)}
        if self.params.predictor == "student":
            out["predictor"] = model_digest(student.model)
        return out

    # ------------------------------------------------------------------ pieces
    def _build(self, student: Any, emb: nn.Embedding) -> tuple[MaskModel, Any]:
        p = self.params
        if p.predictor == "student":
            # a copy of the student as it starts (its pre-trained base): same tokenizer, and a
            # predictor that can already read, as the paper's pre-trained FlanT5-Large can
            predictor = copy.deepcopy(student.model)
            pred_tok, enc_dec = student.tokenizer, bool(student.is_encoder_decoder)
        elif p.predictor.startswith("tiny:"):
            predictor = build_tiny(p.predictor, p.predictor_tiny, student.tokenizer)
            pred_tok, enc_dec = student.tokenizer, bool(predictor.config.is_encoder_decoder)
            pe = predictor.get_input_embeddings()
            if pe.weight.shape == emb.weight.shape:
                # same vocabulary and width: start from the student's embedding (tied to the
                # output head), so the inputs it reads and the answers it writes share a space
                with torch.no_grad():
                    pe.weight.copy_(emb.weight)
        else:
            pre = load_pretrained(
                p.predictor,
                revision=p.revision,
                trust_remote_code=p.trust_remote_code,
                gguf_file=p.predictor_gguf_file,
                dtype=p.predictor_dtype,
                field="weighting.params.predictor",
                gguf_field="weighting.params.predictor_gguf_file",
            )
            predictor, pred_tok, enc_dec = pre.model, pre.tokenizer, pre.is_encoder_decoder
        return MaskModel(emb, predictor, enc_dec, p), pred_tok
