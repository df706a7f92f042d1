"""The mask-learning model (paper §3.3, Eqs. 2–7): weight generator, Gumbel mask, answer predictor.

:class:`MaskModel` holds the generator (the student's frozen input embedding → one self-attention
layer → MLP → ``z``, ``w = σ(z)``), the learned mask embedding ``v_mask``, a projection into the
predictor's width and the answer predictor, and computes ``L_p``; :func:`choose_prefixes` picks
the rationale prefixes it is trained on. :mod:`kpod.weighting.mask_learning` builds it and
:mod:`kpod.weighting.mask_fit` fits it and exports the weights.
"""

from __future__ import annotations

import math
import random
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from kpod.data.packing import pack_examples
from kpod.data.padding import lengths_mask, pad_to
from kpod.data.tokenize import IGNORE_INDEX


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
        # a learned v_mask can itself carry answer information to a frozen predictor, so that masking
        # everything pays (or nothing does): `learn_mask_embedding: false` keeps the mean embedding
        self.v_mask.requires_grad_(params.learn_mask_embedding)
        d_s = embedding.embedding_dim
        d_p = predictor.get_input_embeddings().embedding_dim
        self.proj: nn.Module = nn.Linear(d_s, d_p) if (d_s != d_p or params.projection == "always") else nn.Identity()
        self.predictor = predictor
        self.is_encoder_decoder = is_encoder_decoder
        # train.packing for a causal predictor (set by the strategy once the predictor passed
        # the probe): prefix + answer sequences packed in rows of pack_rows_of × the longest
        self.packing = False
        self.pack_rows_of: int | None = 1
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
        if self.is_encoder_decoder:
            per_seq = self._seq2seq_nll(seqs, answers)
        elif self.packing:
            per_seq = self._packed_causal_nll(seqs, answers)
        else:
            per_seq = self._padded_causal_nll(seqs, answers)
        per_ex = torch.zeros(batch_size, device=dev).index_add(0, torch.tensor(owner, device=dev), per_seq)
        counts = torch.zeros(batch_size, device=dev).index_add(
            0, torch.tensor(owner, device=dev), torch.ones_like(per_seq)
        )
        return (per_ex / counts.clamp_min(1)).mean()

    def _seq2seq_nll(self, seqs: list[torch.Tensor], answers: list[list[int]]) -> torch.Tensor:
        dev = seqs[0].device
        x = self.proj(pad_to(seqs, 0.0, dtype=torch.float32, device=dev))
        att = lengths_mask([s.size(0) for s in seqs], x.size(1), device=dev)
        labels = pad_to(answers, -100, device=dev)
        out = self.predictor(inputs_embeds=x, attention_mask=att, labels=labels)
        return _mean_target_nll(out.logits, labels)

    def _padded_causal_nll(self, seqs: list[torch.Tensor], answers: list[list[int]]) -> torch.Tensor:
        dev = seqs[0].device
        lengths = [s.size(0) for s in seqs]
        x = self.proj(pad_to(seqs, 0.0, dtype=torch.float32, device=dev))
        labels = pad_to(answers, -100, device=dev)
        # each answer right after its own prefix (no gap of padding between them)
        emb = self.predictor.get_input_embeddings()(labels.clamp_min(0))
        full = pad_to([torch.cat([x[i, :k], emb[i]]) for i, k in enumerate(lengths)], 0.0, dtype=x.dtype, device=dev)
        att2 = lengths_mask([k + len(a) for k, a in zip(lengths, answers)], full.size(1), device=dev)
        ignored = [torch.full((k,), -100, dtype=torch.long, device=dev) for k in lengths]
        lab2 = pad_to([torch.cat([g, labels[i]]) for i, g in enumerate(ignored)], -100, device=dev)
        out = self.predictor(inputs_embeds=full, attention_mask=att2)
        return _mean_target_nll(out.logits[:, :-1], lab2[:, 1:])

    def _packed_causal_nll(self, seqs: list[torch.Tensor], answers: list[list[int]]) -> torch.Tensor:
        """:meth:`_padded_causal_nll`, padding-free (``train.packing``; :mod:`kpod.data.packing`):
        each prefix + answer is one sequence of a packed row. :func:`pack_examples` lays out the
        indices of their embeddings in one flat table (the last entry: zeros, for the row tails),
        so the packed ``inputs_embeds`` are a gather and gradients reach the mask as before."""
        dev = seqs[0].device
        emb = self.predictor.get_input_embeddings()
        parts = [torch.cat([self.proj(s.float()), emb(torch.tensor(a, device=dev))]) for s, a in zip(seqs, answers)]
        starts = np.cumsum([0] + [x.size(0) for x in parts])
        exs = [{"input_ids": np.arange(starts[i], starts[i + 1]),
                "labels": np.asarray([IGNORE_INDEX] * s.size(0) + list(a), dtype=np.int64)}
               for i, (s, a) in enumerate(zip(seqs, answers))]
        longest = max(x.size(0) for x in parts)
        width = longest * (len(parts) if self.pack_rows_of is None else self.pack_rows_of)
        batch = pack_examples(exs, [str(i) for i in range(len(exs))], int(starts[-1]), width)
        table = torch.cat([*parts, parts[0].new_zeros(1, parts[0].size(1))])
        out = self.predictor(inputs_embeds=table[batch["input_ids"].to(dev)],
                             position_ids=batch["position_ids"].to(dev), use_cache=False)
        tgt = batch["labels"][:, 1:].to(dev)
        nll = _target_nll(out.logits[:, :-1], tgt)
        mask = tgt != IGNORE_INDEX
        seq = batch["seq_index"][:, 1:].to(dev)[mask]
        total = torch.zeros(len(parts), device=dev).index_add(0, seq, nll[mask])
        count = torch.zeros(len(parts), device=dev).index_add(0, seq, torch.ones_like(nll[mask]))
        return total / count.clamp_min(1)


def _target_nll(logits: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    """Per-position NLL in fp32 of ``tgt`` (−100: none, NLL 0) under ``logits``."""
    nll = F.cross_entropy(
        logits.float().reshape(-1, logits.size(-1)), tgt.clamp_min(0).reshape(-1), reduction="none"
    ).view(tgt.shape)
    return nll * (tgt != IGNORE_INDEX)


def _mean_target_nll(logits: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    """Mean NLL over each row's targets."""
    mask = tgt != IGNORE_INDEX
    return _target_nll(logits, tgt).sum(1) / mask.sum(1).clamp_min(1)


def choose_prefixes(n_steps: int, step_ends: list[int], num: int | None, rng: random.Random) -> list[int]:
    """Token counts of the rationale prefixes for one example (Eq. 5's "every prefix").

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
