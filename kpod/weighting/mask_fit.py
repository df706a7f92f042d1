"""The optimisation of mask learning (paper §3.3, Eq. 7) and the export of its weights.

:class:`~kpod.weighting.mask_learning.MaskLearning` builds the generator and the answer
predictor (:class:`~kpod.weighting.mask_model.MaskModel`); :class:`MaskFit` fits them: an optional
predictor warm-up on unmasked rationales, then ``L_p + α·L_m`` on masked rationale prefixes, a
check on held-out rationales, and the deterministic weights (no noise) of every rationale.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from kpod.data.padding import pad_batch
from kpod.weighting.base import CharSpanWeights
from kpod.weighting.mask_model import MaskModel, choose_prefixes
from kpod.weighting.tokens import RationaleTokens

if TYPE_CHECKING:
    from kpod.weighting.mask_learning import MaskLearning


class MaskFit:
    """The fit of one :class:`~kpod.weighting.mask_learning.MaskLearning` (its ``params``)."""

    def __init__(self, params: MaskLearning.Params) -> None:
        self.params = params

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
        groups = self.param_groups(model, not p.freeze_predictor)
        model.train()
        batches = BatchStream(train, p.batch_size, rng)
        ctx = (
            reporter.task("mask learning", total=total + p.predictor_warmup_steps)
            if reporter is not None
            else contextlib.nullcontext(lambda n, desc: None)
        )
        with ctx as advance:
            phase = Phase(model, batches, answers, groups, device, gen, rng, metrics, advance)
            self.warm_up_predictor(phase)
            last = self.learn_masks(phase, total)
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

    def param_groups(self, model: MaskModel, predictor: bool) -> list[dict[str, Any]]:
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

    def warm_up_predictor(self, phase: Phase) -> None:
        """``predictor_warmup_steps`` steps fitting the predictor on unmasked rationales (also a
        predictor that ``freeze_predictor`` keeps fixed afterwards)."""
        p = self.params
        if p.predictor_warmup_steps == 0:
            return
        predictor = phase.model.predictor
        if p.freeze_predictor:  # fitted here, fixed while the masks are learned
            predictor.requires_grad_(True)
        groups = phase.groups if not p.freeze_predictor else self.param_groups(phase.model, True)
        opt = torch.optim.AdamW(groups, weight_decay=0.0)
        for step in range(1, p.predictor_warmup_steps + 1):
            batch = phase.batches.next()
            lp, _, _ = self.losses(phase.model, batch, phase.answers, 0, phase.device, phase.gen, phase.rng, keep_all=True)
            self._step(groups, opt, lp)
            if phase.metrics is not None and (step % p.log_every == 0):
                phase.metrics.write(phase="weighting_warmup", step=step, L_p=round(float(lp.detach()), 5))
            phase.advance(1, f"warm-up L_p {float(lp.detach()):.3f}")
        if p.freeze_predictor:
            predictor.requires_grad_(False)

    def learn_masks(self, phase: Phase, total: int) -> dict[str, float]:
        """``total`` steps of ``L_p + alpha * L_m`` (Eq. 7); returns the last step's values."""
        p = self.params
        opt = torch.optim.AdamW(phase.groups, weight_decay=0.0)  # fresh moments for the joint phase
        last: dict[str, float] = {}
        for step in range(1, total + 1):
            batch = phase.batches.next()
            lp, lm, kept = self.losses(phase.model, batch, phase.answers, 0, phase.device, phase.gen, phase.rng)
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
            lp, _, kept = self.losses(model, val, answers, 0, device, None, random.Random(0), deterministic=True)
        out = {"val_L_p": round(float(lp), 5), "val_kept_ratio": round(kept, 5)}
        if metrics is not None:
            metrics.write(phase="weighting", split="validation", L_p=out["val_L_p"], kept_ratio=out["val_kept_ratio"])
        return out

    def losses(
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
            for k in self.prefix_ends(t, num, rng):
                seqs.append(torch.cat([pre, vt[b, :k]], 0))
                ans.append(answers[t.sample_id])
                owner.append(b)
        lp = model.prediction_loss(seqs, ans, owner, len(batch))
        real = rat_mask.float()
        kept_per = (m * real).sum(1)
        lm = (kept_per / real.sum(1).clamp_min(1)).mean() if p.ratio_loss == "mean" else kept_per.mean()
        kept = float((m.detach() * real).sum() / real.sum().clamp_min(1))
        return lp, lm, kept

    def prefix_ends(self, t: RationaleTokens, num: int | None, rng: random.Random) -> list[int]:
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


class BatchStream:
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
class Phase:
    """What both optimisation phases of :meth:`MaskFit.fit` share."""

    model: MaskModel
    batches: BatchStream
    answers: dict[str, list[int]]
    groups: list[dict[str, Any]]
    device: torch.device
    gen: torch.Generator
    rng: random.Random
    metrics: Any
    advance: Callable[[int, str], None]
