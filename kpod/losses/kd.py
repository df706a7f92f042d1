"""``kd``: token-level distillation from a teacher's stored top-k distributions, mixed with the CE.

Per target token t (rationale, answer sentence, EOS):

    ℓ_t = (1 − α)·CE_t + α·T²·D(q_t, p_t)

with D the divergence of ``loss.params.divergence`` between the teacher's distribution q_t, read
from a :class:`~kpod.data.topk_store.TopKStore` (``kpod/teach/rescore.py`` writes one), and the
student's p_t at temperature T, both over the teacher's top-k ids (renormalised, or with a tail
bucket; kpod/losses/divergence.py). T² keeps the gradient's scale across temperatures (Hinton et
al., 2015). The engine reduces Σ w·ℓ / Σ w as for every loss: ``weights: weighted`` takes w from
the weighting strategy (keypoint-weighted KD: a keypoint's divergence counts more), ``uniform``
weighs every target token 1 (plain KD); the answer sentence weighs ``answer_weight`` (Eq. 15's
rule, as in the ``kpod`` loss).

The teacher's distribution for a target token is found by sample_id and character, never by
position: the batch's ``char_pos`` (each label's offset from the rationale's start) and the token
id must match a stored target token. A token the store does not have is an error naming the sample
— a store written with another tokenizer stops here (different vocabularies are not aligned).
The chunked path (``train.loss_chunk_tokens``) computes the student's log-probs at the teacher's
ids a chunk of rows at a time (no ``[N, V]`` tensor); packing works as for any per-token loss.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from kpod.data.topk_store import TokenDistributions, TopKStore, TopKStoreError
from kpod.losses.base import TokenLoss, per_token_nll
from kpod.losses.divergence import bucket_logprobs, linear_logprobs_at, token_divergence
from kpod.losses.token_ce import KpodLoss
from kpod.registry import LOSSES


@LOSSES
class KdLoss(KpodLoss):
    """(1 − α)·CE + α·T²·D(teacher ‖ student) per token over a stored top-k, weighted like ``kpod``."""

    name: ClassVar[str] = "kd"

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        teacher_store: str = Field(..., description="directory of the teacher's top-k store (kpod/teach/rescore.py)")
        divergence: Literal["forward_kl", "reverse_kl", "jsd"] = Field(
            "forward_kl", description="forward_kl: KL(teacher ‖ student); reverse_kl: KL(student ‖ teacher); "
            "jsd: generalised Jensen–Shannon with beta")
        beta: float = Field(0.5, gt=0.0, lt=1.0, description="jsd: β·KL(q‖m) + (1−β)·KL(p‖m), m = β·q + (1−β)·p")
        buckets: Literal["tail", "renorm"] = Field(
            "tail", description="tail: the top-k plus one bucket for the rest; renorm: the top-k renormalised")
        temperature: float = Field(1.0, gt=0.0, description="T of student and teacher (the divergence is scaled by T²)")
        alpha: float = Field(0.5, ge=0.0, le=1.0, description="share of the divergence: (1 − α)·CE + α·T²·D")
        weights: Literal["weighted", "uniform"] = Field(
            "uniform", description="weighted: the weighting strategy's token weights (keypoint-weighted KD)")
        answer_weight: float = Field(1.0, gt=0.0, description="weight of answer-sentence tokens")

        @model_validator(mode="after")
        def _tail_needs_t1(self) -> KdLoss.Params:
            if self.buckets == "tail" and self.temperature != 1.0:
                raise ValueError("temperature: the stored tail mass is at T = 1; with temperature ≠ 1 use buckets: renorm")
            return self

    params: Params

    def __init__(self, params: BaseModel | None = None) -> None:
        super().__init__(params)
        self._store: TopKStore | None = None
        self._dists: dict[str, TokenDistributions] = {}
        self._where: dict[str, dict[tuple[int, int], list[int]]] = {}

    def _teacher(self) -> TopKStore:
        """The store, opened read-only on first use (its index is read once)."""
        if self._store is None:
            self._store = TopKStore.reader(self.params.teacher_store)
            self._store.open()
        return self._store

    def _dist(self, sample_id: str) -> tuple[TokenDistributions, dict[tuple[int, int], list[int]]]:
        if sample_id not in self._dists:
            dist = self._teacher().get(sample_id)
            where: dict[tuple[int, int], list[int]] = defaultdict(list)
            for j, (start, tok) in enumerate(zip(dist.offsets[:, 0].tolist(), dist.token_ids.tolist())):
                where[(start, tok)].append(j)
            self._dists[sample_id], self._where[sample_id] = dist, where
        return self._dists[sample_id], self._where[sample_id]

    def teacher_rows(self, batch: dict[str, Any], mask: torch.Tensor,
                     sl: slice) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The teacher's top-k ids and log-probs ``[N, k]`` and tail log-mass ``[N]`` for the N
        targets of ``mask`` (row-major order), matched by sample_id, character and token id."""
        rows, cols = (t.cpu().numpy() for t in mask.nonzero(as_tuple=True))
        labels = batch["labels"][:, sl].cpu().numpy()
        char_pos = batch["char_pos"][:, sl].cpu().numpy()
        seq = batch["seq_index"][:, sl].cpu().numpy() if batch.get("packed") else None
        k = self._teacher().k
        ids = np.zeros((len(rows), k), dtype=np.int64)
        logp = np.zeros((len(rows), k), dtype=np.float32)
        tail = np.zeros(len(rows), dtype=np.float32)
        used: dict[tuple[str, int, int], int] = defaultdict(int)  # repeats of (sample, char, token)
        for n, (r, t) in enumerate(zip(rows.tolist(), cols.tolist())):
            sid = batch["sample_ids"][seq[r, t] if seq is not None else r]
            dist, where = self._dist(sid)
            key = (int(char_pos[r, t]), int(labels[r, t]))
            hits = where.get(key, [])
            i = used[(sid, *key)]
            if i >= len(hits):
                raise TopKStoreError(
                    f"loss.params.teacher_store: no teacher distribution for sample {sid!r} at rationale character "
                    f"{key[0]} (token id {key[1]}): the store was written from other text or with another tokenizer "
                    f"(stored: {self._teacher().header['tokenizer']}); kd needs the student's tokenizer")
            used[(sid, *key)] += 1
            ids[n], logp[n], tail[n] = dist.top_ids[hits[i]], dist.top_logprobs[hits[i]], dist.tail_logprob[hits[i]]
        return ids, logp, tail

    def _mix(self, nll: torch.Tensor, mask: torch.Tensor, student_at: Any, batch: dict[str, Any], sl: slice,
             is_encoder_decoder: bool, vocab: int) -> TokenLoss:
        """(1 − α)·CE + α·T²·D at the targets; ``student_at(ids)`` gives the student's log-probs
        ``[N, k]`` at the teacher's ids for the same targets."""
        p = self.params
        if mask.any():
            ids_np, logp_np, tail_np = self.teacher_rows(batch, mask, sl)
            ids = torch.from_numpy(ids_np).to(nll.device)
            valid = ids >= 0
            student = student_at(ids.clamp_min(0))
            teacher = torch.from_numpy(logp_np).to(nll.device) / p.temperature
            tail = torch.from_numpy(tail_np).to(nll.device) if p.buckets == "tail" else None  # T = 1 there
            s_b, t_b = bucket_logprobs(student, teacher, valid, p.buckets, tail)
            div = token_divergence(s_b, t_b, p.divergence, p.beta) * p.temperature**2
            flat = mask.reshape(-1).nonzero().squeeze(1)
            mixed = (1.0 - p.alpha) * nll.reshape(-1).index_select(0, flat) + p.alpha * div
            nll = torch.zeros_like(nll).reshape(-1).index_put((flat,), mixed).view(nll.shape)
        return self._weights(nll, None, batch, is_encoder_decoder, vocab)

    def __call__(self, logits: torch.Tensor, batch: dict[str, Any], is_encoder_decoder: bool) -> TokenLoss:
        nll, mask, sl = per_token_nll(logits, batch["labels"], is_encoder_decoder)
        shifted = logits if is_encoder_decoder else logits[:, :-1]
        flat = mask.reshape(-1).nonzero().squeeze(1)

        def student_at(ids: torch.Tensor) -> torch.Tensor:
            rows = shifted.reshape(-1, shifted.size(-1)).index_select(0, flat).float() / self.params.temperature
            return torch.log_softmax(rows, -1).gather(1, ids)

        return self._mix(nll, mask, student_at, batch, sl, is_encoder_decoder, logits.size(-1))

    def from_hidden(self, hidden: torch.Tensor, head: torch.nn.Linear, batch: dict[str, Any],
                    is_encoder_decoder: bool, chunk_tokens: int) -> TokenLoss:
        from kpod.losses.chunked import linear_token_nll

        nll, mask, sl = linear_token_nll(hidden, head.weight, head.bias, batch["labels"], is_encoder_decoder, chunk_tokens)
        shifted = hidden if is_encoder_decoder else hidden[:, :-1]
        flat = mask.reshape(-1).nonzero().squeeze(1)

        def student_at(ids: torch.Tensor) -> torch.Tensor:
            h = shifted.reshape(-1, shifted.size(-1)).index_select(0, flat)
            return linear_logprobs_at(h, head.weight, head.bias, ids, chunk_tokens, self.params.temperature)

        return self._mix(nll, mask, student_at, batch, sl, is_encoder_decoder, head.weight.shape[0])
