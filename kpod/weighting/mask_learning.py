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
from typing import Any, ClassVar, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator

from kpod.recipe import TinyModelConfig
from kpod.registry import WEIGHTING
from kpod.weighting.base import CharSpanWeights, WeightingContext, WeightingStrategy
from kpod.weighting.cache import cache_key, cache_path, load_weights, save_weights
from kpod.weighting.tokens import RationaleTokens, rationale_tokens_many


class PredictorTiny(TinyModelConfig):
    """A tiny answer predictor built from a config (same fields and checks as a tiny student)."""

    hidden_size: int = Field(64, gt=0)
    num_layers: int = Field(2, gt=0)
    intermediate_size: int = Field(128, gt=0)
    max_positions: int = Field(1024, gt=0)


def nearest_divisor(width: int, heads: int) -> int:
    """``heads`` if it divides ``width``, else the nearest divisor of ``width``."""
    divisors = [d for d in range(1, width + 1) if width % d == 0]
    return min(divisors, key=lambda d: (abs(d - heads), -d))


class WeightGenerator(nn.Module):
    """Eqs. 2–3: frozen embedding → self-attention → MLP → logit ``z`` (w = sigmoid(z))."""

    def __init__(self, embedding: nn.Embedding, heads: int = 8, mlp_hidden: int = 256) -> None:
        super().__init__()
        d = embedding.embedding_dim
        self.embedding = nn.Embedding.from_pretrained(embedding.weight.detach().clone().float(), freeze=True)
        self.attn = nn.MultiheadAttention(d, nearest_divisor(d, heads), batch_first=True)
        self.norm = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, mlp_hidden), nn.GELU(), nn.Linear(mlp_hidden, 1))

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``ids``/``mask`` ``[B, R]`` → logits ``z`` ``[B, R]`` (fp32)."""
        v = self.embedding(ids)
        h, _ = self.attn(v, v, v, key_padding_mask=~mask, need_weights=False)
        h = self.norm(v + h)
        return self.mlp(h).squeeze(-1)


def gumbel_mask(z: torch.Tensor, tau: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Straight-through 2-class Gumbel-softmax with logits [log w, log(1 − w)], w = σ(z).

    ``m̃ = σ((z + g₁ − g₀)/τ)``, ``m = 1[m̃ > ½] + m̃ − sg(m̃)``: hard values forward, the
    relaxed gradient backward. P(m = 1) = σ(z) = w for every τ.
    """
    u = torch.rand((2, *z.shape), generator=generator, device="cpu").to(z.device)
    g = -torch.log(-torch.log(u.clamp(1e-10, 1 - 1e-10)))
    soft = torch.sigmoid((z + g[1] - g[0]) / tau)
    hard = (soft > 0.5).to(soft.dtype)
    return hard + (soft - soft.detach())  # exactly 0/1 forward; relaxed gradient backward


class MaskModel(nn.Module):
    """Generator + mask embedding + projection + answer predictor; computes L_p and L_m."""

    def __init__(self, embedding: nn.Embedding, predictor: Any, is_encoder_decoder: bool, params: Any) -> None:
        super().__init__()
        self.params = params
        self.generator = WeightGenerator(embedding, params.heads, params.mlp_hidden)
        if params.init_keep is not None:
            with torch.no_grad():
                self.generator.mlp[2].bias.fill_(math.log(params.init_keep / (1 - params.init_keep)))
        self.v_mask = nn.Parameter(embedding.weight.detach().float().mean(0).clone())
        d_s = embedding.embedding_dim
        d_p = predictor.get_input_embeddings().embedding_dim
        self.proj: nn.Module = nn.Linear(d_s, d_p) if (d_s != d_p or params.projection == "always") else nn.Identity()
        self.predictor = predictor
        self.is_encoder_decoder = is_encoder_decoder
        if params.freeze_predictor:  # frozen weights, but gradients still flow through inputs_embeds
            for p in predictor.parameters():
                p.requires_grad_(False)

    def masked_embeddings(self, rat_ids: torch.Tensor, rat_mask: torch.Tensor, generator: torch.Generator | None):
        z = self.generator(rat_ids, rat_mask)
        m = gumbel_mask(z, self.params.temperature, generator) * rat_mask
        v = self.generator.embedding(rat_ids)
        vt = m.unsqueeze(-1) * v + (1.0 - m.unsqueeze(-1)) * self.v_mask
        return z, m, vt

    def prediction_loss(
        self,
        seqs: list[torch.Tensor],
        answers: list[list[int]],
        owner: list[int],
        batch_size: int,
    ) -> torch.Tensor:
        """Mean answer NLL per prefix, averaged over each example's prefixes, then the batch."""
        dev = seqs[0].device
        n = len(seqs)
        width = max(s.size(0) for s in seqs)
        d = seqs[0].size(1)
        x = torch.zeros((n, width, d), device=dev)
        att = torch.zeros((n, width), dtype=torch.long, device=dev)
        for i, s in enumerate(seqs):
            x[i, : s.size(0)] = s
            att[i, : s.size(0)] = 1
        x = self.proj(x)
        la = max(len(a) for a in answers)
        labels = torch.full((n, la), -100, dtype=torch.long, device=dev)
        for i, a in enumerate(answers):
            labels[i, : len(a)] = torch.tensor(a, device=dev)
        if self.is_encoder_decoder:
            out = self.predictor(inputs_embeds=x, attention_mask=att, labels=labels)
            logits, tgt = out.logits, labels
        else:
            emb = self.predictor.get_input_embeddings()(labels.clamp_min(0))
            # right-aligned answers would need position care; place them right after each prefix
            full = torch.zeros((n, width + la, x.size(-1)), device=dev, dtype=x.dtype)
            att2 = torch.zeros((n, width + la), dtype=torch.long, device=dev)
            lab2 = torch.full((n, width + la), -100, dtype=torch.long, device=dev)
            for i, s in enumerate(seqs):
                k = s.size(0)
                full[i, :k] = x[i, :k]
                full[i, k : k + la] = emb[i]
                att2[i, : k + len(answers[i])] = 1
                lab2[i, k : k + la] = labels[i]
            out = self.predictor(inputs_embeds=full, attention_mask=att2)
            logits, tgt = out.logits[:, :-1], lab2[:, 1:]
        mask = tgt != -100
        nll = F.cross_entropy(
            logits.float().reshape(-1, logits.size(-1)), tgt.clamp_min(0).reshape(-1), reduction="none"
        ).view(tgt.shape)
        per_seq = (nll * mask).sum(1) / mask.sum(1).clamp_min(1)
        per_ex = torch.zeros(batch_size, device=dev).index_add(0, torch.tensor(owner, device=dev), per_seq)
        counts = torch.zeros(batch_size, device=dev).index_add(
            0, torch.tensor(owner, device=dev), torch.ones_like(per_seq)
        )
        return (per_ex / counts.clamp_min(1)).mean()


def choose_prefixes(n_steps: int, step_ends: list[int], num: int | None, rng: random.Random) -> list[int]:
    """Token counts of the rationale prefixes for one example (§10(c)).

    The full rationale is always included; the others are drawn uniformly without replacement
    from the ends of steps 1..n−1 (``num=None``: all of them). The empty prefix is excluded.
    """
    full = step_ends[-1] if step_ends else 0
    inner = [e for e in step_ends[:-1] if 0 < e < full]
    if num is None:
        picks = inner
    else:
        picks = rng.sample(inner, min(len(inner), max(num - 1, 0)))
    return sorted(set(picks)) + [full]


def _pad(rows: list[list[int]], pad: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(1, max(len(r) for r in rows))
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = True
    return ids.to(device), mask.to(device)


@WEIGHTING
class MaskLearning(WeightingStrategy):
    name: ClassVar[str] = "mask_learning"

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
        init_keep: float | None = Field(
            None, gt=0.0, lt=1.0,
            description="initial keep probability (sets the generator's output bias); None: 0.5",
        )
        heads: int = Field(8, ge=1)
        mlp_hidden: int = Field(256, ge=1)
        projection: Literal["auto", "always"] = "auto"
        freeze_predictor: bool = False
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
        device = ctx.device
        emb = student.model.get_input_embeddings()
        key = cache_key(
            ctx.records,
            self.name,
            self.params.model_dump(mode="json", exclude={"cache", "log_every"}),
            ctx.seed,
            extra=_tensor_hash(emb.weight) + str(len(student.tokenizer)),
        )
        path = cache_path(key, ctx.cache_dir)
        if self.params.cache and path.exists():
            weights, meta = load_weights(path)
            self.report = {**meta, "cache_hit": True, "cache_path": str(path)}
            return weights
        t0 = time.perf_counter()
        toks = rationale_tokens_many(list(ctx.records), template, student.tokenizer)
        model, pred_tok = self._build(student, emb)
        model.to(device)
        fit = self.fit(model, toks, pred_tok, device, ctx.seed, ctx.metrics, ctx.reporter)
        weights = self.export(model, toks, device)
        report = {**fit, "fit_seconds": round(time.perf_counter() - t0, 2), "cache_hit": False}
        if self.params.cache:
            save_weights(path, weights, report)
            report["cache_path"] = str(path)
        self.report = report
        return weights

    # ------------------------------------------------------------------ pieces
    def _build(self, student: Any, emb: nn.Embedding) -> tuple[MaskModel, Any]:
        p = self.params
        if p.predictor == "student":
            # a copy of the student as it starts (its pre-trained base): same tokenizer, and a
            # predictor that can already read, as the paper's pre-trained FlanT5-Large can
            predictor = copy.deepcopy(student.model)
            pred_tok, enc_dec = student.tokenizer, bool(student.is_encoder_decoder)
        elif p.predictor.startswith("tiny:"):
            from kpod.engine.student import build_tiny

            predictor = build_tiny(p.predictor, p.predictor_tiny, student.tokenizer)
            pred_tok, enc_dec = student.tokenizer, bool(predictor.config.is_encoder_decoder)
            pe = predictor.get_input_embeddings()
            if pe.weight.shape == emb.weight.shape:
                # same vocabulary and width: start from the student's embedding (tied to the
                # output head), so the inputs it reads and the answers it writes share a space
                with torch.no_grad():
                    pe.weight.copy_(emb.weight)
        else:
            from kpod.engine.student import load_pretrained

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
        p = self.params
        usable = [t for t in toks if t.rat_ids]
        if not usable:
            raise ValueError("weighting (mask_learning): no training record has a rationale")
        rng = random.Random(seed)
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        if p.max_examples is not None and len(usable) > p.max_examples:
            usable = rng.sample(usable, p.max_examples)
        n_val = max(1, min(64, len(usable) // 20)) if len(usable) >= 40 else 0
        val, train = usable[:n_val], usable[n_val:]
        eos = pred_tok.eos_token_id
        answers = {t.sample_id: list(pred_tok(t.answer, add_special_tokens=False)["input_ids"]) + [eos] for t in usable}
        steps_per_epoch = math.ceil(len(train) / p.batch_size)
        total = max(1, int(round(p.epochs * steps_per_epoch)))
        if p.max_steps is not None:
            total = min(total, p.max_steps)
        new_params = [*model.generator.parameters(), model.v_mask, *model.proj.parameters()]
        groups = [{"params": [q for q in new_params if q.requires_grad], "lr": p.lr}]
        if not p.freeze_predictor:
            groups.append({"params": list(model.predictor.parameters()), "lr": p.predictor_lr})
        opt = torch.optim.AdamW(groups, weight_decay=0.0)
        pad = 0
        model.train()
        order: list[RationaleTokens] = []
        last: dict[str, float] = {}
        ctx = (
            reporter.task("mask learning", total=total + p.predictor_warmup_steps)
            if reporter is not None
            else contextlib.nullcontext(lambda n, desc: None)
        )
        with ctx as advance:
            for step in range(1, p.predictor_warmup_steps + 1):
                if len(order) < p.batch_size:
                    perm = train[:]
                    rng.shuffle(perm)
                    order.extend(perm)
                batch, order = order[: p.batch_size], order[p.batch_size :]
                lp, _, _ = self._losses(model, batch, answers, pad, device, gen, rng, keep_all=True)
                opt.zero_grad(set_to_none=True)
                lp.backward()
                torch.nn.utils.clip_grad_norm_([q for g in groups for q in g["params"]], p.grad_clip)
                opt.step()
                if metrics is not None and (step % p.log_every == 0):
                    metrics.write(phase="weighting_warmup", step=step, L_p=round(float(lp.detach()), 5))
                advance(1, f"warm-up L_p {float(lp.detach()):.3f}")
            opt = torch.optim.AdamW(groups, weight_decay=0.0)  # fresh moments for the joint phase
            for step in range(1, total + 1):
                if len(order) < p.batch_size:
                    perm = train[:]
                    rng.shuffle(perm)
                    order.extend(perm)
                batch, order = order[: p.batch_size], order[p.batch_size :]
                lp, lm, kept = self._losses(model, batch, answers, pad, device, gen, rng)
                ramp = min(1.0, step / (p.alpha_warmup * total)) if p.alpha_warmup > 0 else 1.0
                loss = lp + p.alpha * ramp * lm
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_([q for g in groups for q in g["params"]], p.grad_clip)
                opt.step()
                last = {"L_p": float(lp.detach()), "L_m": float(lm.detach()), "kept_ratio": kept}
                if metrics is not None and (step % p.log_every == 0 or step == total):
                    metrics.write(phase="weighting", step=step, **{k: round(v, 5) for k, v in last.items()})
                advance(1, f"L_p {last['L_p']:.3f} kept {kept:.2f}")
        out = {"steps": total, "final_L_p": round(last["L_p"], 5), "final_kept_ratio": round(last["kept_ratio"], 5)}
        if val:
            model.eval()
            with torch.no_grad():
                lp, _, kept = self._losses(model, val, answers, pad, device, None, random.Random(0), deterministic=True)
            out.update(val_L_p=round(float(lp), 5), val_kept_ratio=round(kept, 5))
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
        rat_ids, rat_mask = _pad([t.rat_ids for t in batch], pad, device)
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
            for k in choose_prefixes(len(t.step_ends), t.step_ends, num, rng):
                seqs.append(torch.cat([pre, vt[b, :k]], 0))
                ans.append(answers[t.sample_id])
                owner.append(b)
        lp = model.prediction_loss(seqs, ans, owner, len(batch))
        real = rat_mask.float()
        kept_per = (m * real).sum(1)
        lm = (kept_per / real.sum(1).clamp_min(1)).mean() if p.ratio_loss == "mean" else kept_per.mean()
        kept = float((m.detach() * real).sum() / real.sum().clamp_min(1))
        return lp, lm, kept

    @torch.no_grad()
    def export(self, model: MaskModel, toks: list[RationaleTokens], device: torch.device, batch_size: int = 128) -> CharSpanWeights:
        """Deterministic weights (eval mode, no noise) as character spans per sample_id."""
        model.eval()
        out: CharSpanWeights = {}
        for i in range(0, len(toks), batch_size):
            chunk = toks[i : i + batch_size]
            ids, mask = _pad([t.rat_ids for t in chunk], 0, device)
            w = torch.sigmoid(model.generator(ids, mask)).cpu()
            for b, t in enumerate(chunk):
                out[t.sample_id] = [(s, e, float(w[b, j])) for j, (s, e) in enumerate(t.rat_spans) if e > s]
        return out


def _tensor_hash(t: torch.Tensor) -> str:
    import hashlib

    return hashlib.sha256(t.detach().float().cpu().numpy().tobytes()).hexdigest()[:16]
