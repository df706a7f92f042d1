"""``mask_learning``: keypoint token weights learned by mask learning (paper §3.3, Eqs. 2–7).

Generator (spec §10(b)): the student's input embedding (frozen) → one trainable self-attention
layer (residual + LayerNorm, padding mask) → MLP (width → 256 → 1, GELU) → sigmoid gives
``w_j``. A 2-class straight-through Gumbel-softmax draws the mask ``m_j`` (P(m_j = 1) = w_j for
every temperature), applied in embedding space: ``ṽ_j = m_j v_j + (1 − m_j) v_mask`` with a
learned ``v_mask`` (initialised to the mean embedding). An answer predictor reads the unmasked
``Q: {x} A: {trigger}`` embeddings followed by a masked rationale prefix through
``inputs_embeds`` (a linear projection when widths differ) and must produce the answer.
Objective: ``L_p + α·L_m`` (Eq. 7), ``L_m`` the mean kept ratio (§10(d); ``sum`` is Eq. 6).
After fitting, ``w`` is exported deterministically (no noise) for every training rationale.
"""

from __future__ import annotations

import contextlib
import copy
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn as nn
from pydantic import BaseModel, ConfigDict, Field, model_validator

from kpod.cache import model_digest, tensor_digest
from kpod.data.packing import pack_row_factor, packing_problem
from kpod.data.padding import pad_batch
from kpod.models.config import TinyModelConfig
from kpod.models.student import load_pretrained, pretrained_config
from kpod.models.tiny import build_tiny
from kpod.registry import WEIGHTING
from kpod.weighting.base import CharSpanWeights, WeightingContext, WeightingStrategy
from kpod.weighting.mask_model import MaskModel, choose_prefixes
from kpod.weighting.tokens import RationaleTokens, rationale_tokens_many


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
        fit = self.fit(model, toks, pred_tok, ctx.device, ctx.seed, ctx.metrics, ctx.reporter)
        weights = self.export(model, toks, ctx.device)
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

    def fit(
        self,
        model: MaskModel,
        toks: list[RationaleTokens],
        pred_tok: Any,
        device: torch.device,
        seed: int,
        metrics: Any = None,
        reporter: Any = None,
    ) -> dict[str, Any]:
        """Optional predictor warm-up, then mask learning (Eq. 7); returns the fit report."""
        p = self.params
        usable = [t for t in toks if t.rat_ids]
        if not usable:
            raise ValueError("weighting (mask_learning): no training record has a rationale")
        rng = random.Random(seed)
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        val, train, answers = self._examples(usable, pred_tok, rng)
        total = max(1, int(round(p.epochs * math.ceil(len(train) / p.batch_size))))
        if p.max_steps is not None:
            total = min(total, p.max_steps)
        groups = self._param_groups(model, not p.freeze_predictor)
        model.train()
        batches = _BatchStream(train, p.batch_size, rng)
        ctx = (
            reporter.task("mask learning", total=total + p.predictor_warmup_steps)
            if reporter is not None
            else contextlib.nullcontext(lambda n, desc: None)
        )
        with ctx as advance:
            phase = _Phase(model, batches, answers, groups, device, gen, rng, metrics, advance)
            self._warm_up_predictor(phase)
            last = self._learn_masks(phase, total)
        out = {"steps": total, "final_L_p": round(last["L_p"], 5), "final_kept_ratio": round(last["kept_ratio"], 5)}
        if val:
            out.update(self._validate(model, val, answers, device, metrics))
        return out

    def _examples(
        self, usable: list[RationaleTokens], pred_tok: Any, rng: random.Random
    ) -> tuple[list[RationaleTokens], list[RationaleTokens], dict[str, list[int]]]:
        """``(validation, training, answers)``: at most ``max_examples`` rationales, a small
        validation head once there are 40, and each answer's predictor token ids plus EOS."""
        p = self.params
        if p.max_examples is not None and len(usable) > p.max_examples:
            usable = rng.sample(usable, p.max_examples)
        n_val = max(1, min(64, len(usable) // 20)) if len(usable) >= 40 else 0
        eos = pred_tok.eos_token_id
        answers = {t.sample_id: list(pred_tok(t.answer, add_special_tokens=False)["input_ids"]) + [eos] for t in usable}
        return usable[:n_val], usable[n_val:], answers

    def _param_groups(self, model: MaskModel, predictor: bool) -> list[dict[str, Any]]:
        """The new layers at ``lr``; with ``predictor``, the predictor at ``predictor_lr``."""
        p = self.params
        new_params = [*model.generator.parameters(), model.v_mask, *model.proj.parameters()]
        groups = [{"params": [q for q in new_params if q.requires_grad], "lr": p.lr}]
        if predictor:
            groups.append({"params": list(model.predictor.parameters()), "lr": p.predictor_lr})
        return groups

    def _step(self, groups: list[dict[str, Any]], opt: torch.optim.Optimizer, loss: torch.Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([q for g in groups for q in g["params"]], self.params.grad_clip)
        opt.step()

    def _warm_up_predictor(self, phase: _Phase) -> None:
        """``predictor_warmup_steps`` steps fitting the predictor on unmasked rationales (also a
        predictor that ``freeze_predictor`` keeps fixed afterwards)."""
        p = self.params
        if p.predictor_warmup_steps == 0:
            return
        predictor = phase.model.predictor
        if p.freeze_predictor:  # fitted here, fixed while the masks are learned
            predictor.requires_grad_(True)
        groups = phase.groups if not p.freeze_predictor else self._param_groups(phase.model, True)
        opt = torch.optim.AdamW(groups, weight_decay=0.0)
        for step in range(1, p.predictor_warmup_steps + 1):
            batch = phase.batches.next()
            lp, _, _ = self._losses(phase.model, batch, phase.answers, 0, phase.device, phase.gen, phase.rng, keep_all=True)
            self._step(groups, opt, lp)
            if phase.metrics is not None and (step % p.log_every == 0):
                phase.metrics.write(phase="weighting_warmup", step=step, L_p=round(float(lp.detach()), 5))
            phase.advance(1, f"warm-up L_p {float(lp.detach()):.3f}")
        if p.freeze_predictor:
            predictor.requires_grad_(False)

    def _learn_masks(self, phase: _Phase, total: int) -> dict[str, float]:
        """``total`` steps of ``L_p + alpha * L_m`` (Eq. 7); returns the last step's values."""
        p = self.params
        opt = torch.optim.AdamW(phase.groups, weight_decay=0.0)  # fresh moments for the joint phase
        last: dict[str, float] = {}
        for step in range(1, total + 1):
            batch = phase.batches.next()
            lp, lm, kept = self._losses(phase.model, batch, phase.answers, 0, phase.device, phase.gen, phase.rng)
            ramp = min(1.0, step / (p.alpha_warmup * total)) if p.alpha_warmup > 0 else 1.0
            self._step(phase.groups, opt, lp + p.alpha * ramp * lm)
            last = {"L_p": float(lp.detach()), "L_m": float(lm.detach()), "kept_ratio": kept}
            if phase.metrics is not None and (step % p.log_every == 0 or step == total):
                phase.metrics.write(phase="weighting", step=step, **{k: round(v, 5) for k, v in last.items()})
            phase.advance(1, f"L_p {last['L_p']:.3f} kept {kept:.2f}")
        return last

    def _validate(
        self, model: MaskModel, val: list[RationaleTokens], answers: dict[str, list[int]], device: torch.device, metrics: Any
    ) -> dict[str, float]:
        """Deterministic masks (keep iff w > 1/2) on the held-out rationales."""
        model.eval()
        with torch.no_grad():
            lp, _, kept = self._losses(model, val, answers, 0, device, None, random.Random(0), deterministic=True)
        out = {"val_L_p": round(float(lp), 5), "val_kept_ratio": round(kept, 5)}
        if metrics is not None:
            metrics.write(phase="weighting", split="validation", L_p=out["val_L_p"], kept_ratio=out["val_kept_ratio"])
        return out

    def _losses(
        self,
        model: MaskModel,
        batch: list[RationaleTokens],
        answers: dict[str, list[int]],
        pad: int,
        device: torch.device,
        gen: torch.Generator | None,
        rng: random.Random,
        deterministic: bool = False,
        keep_all: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, float]:
        p = self.params
        rat_ids, rat_mask = pad_batch([t.rat_ids for t in batch], pad, width=_width(batch), mask_dtype=torch.bool)
        rat_ids, rat_mask = rat_ids.to(device), rat_mask.to(device)
        if keep_all:  # predictor warm-up: the unmasked rationale
            m = rat_mask.float()
            vt = model.generator.embedding(rat_ids)
        elif deterministic:  # validation: keep iff w > 1/2, no noise
            z = model.generator(rat_ids, rat_mask)
            m = (z > 0).float() * rat_mask
            v = model.generator.embedding(rat_ids)
            vt = m.unsqueeze(-1) * v + (1 - m.unsqueeze(-1)) * model.v_mask
        else:
            z, m, vt = model.masked_embeddings(rat_ids, rat_mask, gen)
        emb = model.generator.embedding
        seqs: list[torch.Tensor] = []
        ans: list[list[int]] = []
        owner: list[int] = []
        num = None if p.prefixes == "all" else p.num_prefixes
        for b, t in enumerate(batch):
            pre = emb(torch.tensor(t.prefix_ids, dtype=torch.long, device=device))
            for k in self._prefix_ends(t, num, rng):
                seqs.append(torch.cat([pre, vt[b, :k]], 0))
                ans.append(answers[t.sample_id])
                owner.append(b)
        lp = model.prediction_loss(seqs, ans, owner, len(batch))
        real = rat_mask.float()
        kept_per = (m * real).sum(1)
        lm = (kept_per / real.sum(1).clamp_min(1)).mean() if p.ratio_loss == "mean" else kept_per.mean()
        kept = float((m.detach() * real).sum() / real.sum().clamp_min(1))
        return lp, lm, kept

    def _prefix_ends(self, t: RationaleTokens, num: int | None, rng: random.Random) -> list[int]:
        """Token counts of the masked rationale prefixes the predictor reads for one example."""
        mode, cut = self.params.answer_prefix, t.answer_start
        if mode == "only" and cut is not None:
            return [cut]
        steps = choose_prefixes(len(t.step_ends), t.step_ends, num, rng)
        return steps if mode == "none" or cut is None else sorted({*steps, cut})

    @torch.no_grad()
    def export(self, model: MaskModel, toks: list[RationaleTokens], device: torch.device, batch_size: int = 128) -> CharSpanWeights:
        """Deterministic weights (eval mode, no noise) as character spans per sample_id."""
        model.eval()
        out: CharSpanWeights = {}
        for i in range(0, len(toks), batch_size):
            chunk = toks[i : i + batch_size]
            ids, mask = pad_batch([t.rat_ids for t in chunk], 0, width=_width(chunk), mask_dtype=torch.bool)
            ids, mask = ids.to(device), mask.to(device)
            w = torch.sigmoid(model.generator(ids, mask)).cpu()
            for b, t in enumerate(chunk):
                out[t.sample_id] = [(s, e, float(w[b, j])) for j, (s, e) in enumerate(t.rat_spans) if e > s]
        return out


def _width(toks: list[RationaleTokens]) -> int:
    """Padded width of a batch of rationales: the longest, and at least one position."""
    return max(1, max(len(t.rat_ids) for t in toks))


class _BatchStream:
    """Batches of ``batch_size`` from reshuffled passes over ``train``; what one pass leaves over
    starts the next batch (shared by the warm-up and the joint phase)."""

    def __init__(self, train: list[RationaleTokens], batch_size: int, rng: random.Random) -> None:
        self.train, self.batch_size, self.rng = train, batch_size, rng
        self.order: list[RationaleTokens] = []

    def next(self) -> list[RationaleTokens]:
        if len(self.order) < self.batch_size:
            perm = self.train[:]
            self.rng.shuffle(perm)
            self.order.extend(perm)
        batch, self.order = self.order[: self.batch_size], self.order[self.batch_size :]
        return batch


@dataclass
class _Phase:
    """What both optimisation phases of :meth:`MaskLearning.fit` share."""

    model: MaskModel
    batches: _BatchStream
    answers: dict[str, list[int]]
    groups: list[dict[str, Any]]
    device: torch.device
    gen: torch.Generator
    rng: random.Random
    metrics: Any
    advance: Callable[[int, str], None]
