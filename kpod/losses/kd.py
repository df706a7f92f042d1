"""``kd``: token-level distillation from a teacher's distributions, mixed with the CE.

Per target token t (rationale, answer sentence, EOS):

    ℓ_t = (1 − α)·CE_t + α·T²·D(q_t, p_t)

with D the divergence of ``loss.params.divergence`` between the teacher's distribution q_t and the
student's p_t at temperature T (kpod/losses/divergence.py). T² keeps the gradient's scale across
temperatures (Hinton et al., 2015). The teacher is either

* **stored** (``teacher_store``): its top-k ids and log-probs per target token in a
  :class:`~kpod.data.topk_store.TopKStore` (``kpod rescore`` writes one), compared over those ids,
  renormalised or with a tail bucket; or
* **online** (``teacher_model``): a causal model with the student's tokenizer run beside the
  student on every micro-batch, compared over the full vocabulary (kpod/losses/online_teacher.py),
  optionally **on-policy** (``on_policy`` = GKD's λ: some rows are the student's own rollouts,
  kpod/losses/on_policy.py, trained on the divergence alone).

The engine reduces Σ w·ℓ / Σ w as for every loss: ``weights: weighted`` takes w from the weighting
strategy (keypoint-weighted KD: a keypoint's divergence counts more), ``uniform`` weighs every
target token 1 (plain KD); the answer sentence weighs ``answer_weight`` (Eq. 15's rule, as in the
``kpod`` loss).

A stored distribution is found by the sample's teacher key (its sample_id, unless its record names
another: Specialized KD's formats share their source record's; none: CE alone), the character and
the token id, never by position: the batch's ``char_pos`` (each label's offset from the rationale's
start) and the token id must match a stored target token. A token the store does not have is an
error naming the sample — a store written with another tokenizer stops here (different
vocabularies are not aligned). The chunked path (``train.loss_chunk_tokens``) never builds a
``[N, V]`` tensor for either model; packing works as for any per-token loss (not with rollouts).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from kpod.data.topk_store import TokenDistributions, TopKStore, TopKStoreError
from kpod.losses.base import TokenLoss, per_token_nll
from kpod.losses.divergence import bucket_logprobs, linear_logprobs_at, token_divergence
from kpod.losses.online_teacher import full_divergence, linear_divergence
from kpod.losses.token_ce import KpodLoss
from kpod.registry import LOSSES


def _code(char: Any, token: Any) -> Any:
    """One int64 per (character offset, token id): offsets may be negative, ids are < 2³¹."""
    return (np.asarray(char, dtype=np.int64) << 32) + np.asarray(token, dtype=np.int64)


@LOSSES
class KdLoss(KpodLoss):
    """(1 − α)·CE + α·T²·D(teacher ‖ student) per token over a stored top-k, weighted like ``kpod``."""

    name: ClassVar[str] = "kd"

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        teacher_store: str | None = Field(
            None, description="directory of the teacher's top-k store (kpod rescore writes one); or teacher_model")
        teacher_model: str | None = Field(
            None, description="an online teacher instead of a store: a run directory, model directory or hub id "
            "with the student's tokenizer, run beside the student; the divergence is over the full vocabulary")
        divergence: Literal["forward_kl", "reverse_kl", "jsd"] = Field(
            "forward_kl", description="forward_kl: KL(teacher ‖ student); reverse_kl: KL(student ‖ teacher); "
            "jsd: generalised Jensen–Shannon with beta")
        beta: float = Field(0.5, gt=0.0, lt=1.0, description="jsd: β·KL(q‖m) + (1−β)·KL(p‖m), m = β·q + (1−β)·p")
        buckets: Literal["tail", "renorm"] = Field(
            "tail", description="a store's top-k: tail: plus one bucket for the rest; renorm: renormalised "
            "(an online teacher takes the full vocabulary)")
        temperature: float = Field(1.0, gt=0.0, description="T of student and teacher (the divergence is scaled by T²)")
        alpha: float = Field(0.5, ge=0.0, le=1.0, description="share of the divergence: (1 − α)·CE + α·T²·D")
        weights: Literal["weighted", "uniform"] = Field(
            "uniform", description="weighted: the weighting strategy's token weights (keypoint-weighted KD)")
        answer_weight: float = Field(1.0, gt=0.0, description="weight of answer-sentence tokens")
        on_policy: float = Field(
            0.0, ge=0.0, le=1.0, description="GKD's λ: the share of samples whose completion the student "
            "generates itself at each step (its current weights), trained on the divergence only; needs teacher_model")
        on_policy_temperature: float = Field(1.0, ge=0.0, description="sampling temperature of the rollouts (0: greedy)")
        on_policy_max_new_tokens: int = Field(200, ge=1, description="longest rollout, in tokens")

        @model_validator(mode="after")
        def _one_teacher(self) -> KdLoss.Params:
            if (self.teacher_store is None) == (self.teacher_model is None):
                raise ValueError("teacher_store or teacher_model: set exactly one (a stored top-k, or an online teacher)")
            if self.on_policy > 0 and self.teacher_model is None:
                raise ValueError("on_policy: the student's own text has no stored distributions; set teacher_model "
                                 "(an online teacher) instead of teacher_store")
            if self.teacher_store is not None and self.buckets == "tail" and self.temperature != 1.0:
                raise ValueError("temperature: the stored tail mass is at T = 1; with temperature ≠ 1 use buckets: renorm")
            return self

    params: Params

    def __init__(self, params: BaseModel | None = None) -> None:
        super().__init__(params)
        self._store: TopKStore | None = None
        self._dists: dict[str, TokenDistributions] = {}
        self._where: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # per key: sorted (char, token) codes, their rows
        self._online: Any = None  # the OnlineTeacher of teacher_model, set by bind()
        self._tokenizer: Any = None  # the student's, set by bind() (on-policy rollouts)

    def _teacher(self) -> TopKStore:
        """The store, opened read-only on first use (its index is read once)."""
        if self._store is None:
            self._store = TopKStore.reader(self.params.teacher_store)
            self._store.open()
        return self._store

    def _dist(self, sample_id: str) -> tuple[TokenDistributions, tuple[np.ndarray, np.ndarray]]:
        """The stored distributions of ``sample_id`` and their index: each target's (character,
        token id) code, sorted, and its row (a stable sort: repeats stay in text order)."""
        if sample_id not in self._dists:
            dist = self._teacher().get(sample_id)
            codes = _code(dist.offsets[:, 0], dist.token_ids)
            order = np.argsort(codes, kind="stable")
            self._dists[sample_id], self._where[sample_id] = dist, (codes[order], order)
        return self._dists[sample_id], self._where[sample_id]

    def teacher_rows(self, batch: dict[str, Any], mask: torch.Tensor,
                     sl: slice) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The teacher's top-k ids and log-probs ``[N, k]``, tail log-mass ``[N]`` and whether
        there is a teacher distribution ``[N]`` for the N targets of ``mask`` (row-major order),
        matched by the sample's teacher key (``batch["teacher_keys"]``: its sample_id unless its
        record says otherwise; None: no distribution), character and token id."""
        rows, cols = (t.cpu().numpy() for t in mask.nonzero(as_tuple=True))
        labels = batch["labels"][:, sl].cpu().numpy()
        char_pos = batch["char_pos"][:, sl].cpu().numpy()
        seq = batch["seq_index"][:, sl].cpu().numpy() if batch.get("packed") else None
        k = self._teacher().k
        ids = np.zeros((len(rows), k), dtype=np.int64)
        logp = np.zeros((len(rows), k), dtype=np.float32)
        tail = np.zeros(len(rows), dtype=np.float32)
        has = np.ones(len(rows), dtype=bool)
        keys = batch.get("teacher_keys", batch["sample_ids"])
        # repeats of (char, token) within one sequence of the batch (several sequences may share a key)
        used: dict[tuple[int, int, int], int] = defaultdict(int)
        for n, (r, t) in enumerate(zip(rows.tolist(), cols.tolist())):
            s = int(seq[r, t]) if seq is not None else r
            sid = keys[s]
            if sid is None:  # a record without a teacher distribution (Specialized KD's answer-only formats)
                has[n], ids[n] = False, -1
                continue
            dist, (codes, order) = self._dist(sid)
            key = (int(char_pos[r, t]), int(labels[r, t]))
            code = _code(*key)
            hits = order[np.searchsorted(codes, code, "left"):np.searchsorted(codes, code, "right")]
            i = used[(s, *key)]
            if i >= len(hits):
                raise TopKStoreError(
                    f"loss.params.teacher_store: no teacher distribution for sample {sid!r} at rationale character "
                    f"{key[0]} (token id {key[1]}): the store was written from other text or with another tokenizer "
                    f"(stored: {self._teacher().header['tokenizer']}); kd needs the student's tokenizer")
            used[(s, *key)] += 1
            ids[n], logp[n], tail[n] = dist.top_ids[hits[i]], dist.top_logprobs[hits[i]], dist.tail_logprob[hits[i]]
        return ids, logp, tail, has

    def bind(self, student: Any, device: torch.device | str) -> None:
        """With ``teacher_model``: load the online teacher onto ``device``, checking that it is causal
        and shares the student's vocabulary (ids are compared position by position)."""
        if self.params.teacher_model is None:
            return
        from kpod.losses.online_teacher import OnlineTeacher
        from kpod.models.student import StudentError, load_model_ref

        field = "loss.params.teacher_model"
        if student.is_encoder_decoder:
            raise StudentError(f"{field}: an online teacher reads the student's causal sequences; "
                               f"{student.source} is an encoder-decoder (use a stored teacher: loss.params.teacher_store)")
        teacher = load_model_ref(self.params.teacher_model, field)
        if teacher.is_encoder_decoder:
            raise StudentError(f"{field}: {self.params.teacher_model} is an encoder-decoder; the online teacher must be causal")
        if teacher.tokenizer.get_vocab() != student.tokenizer.get_vocab():
            raise StudentError(
                f"{field}: {self.params.teacher_model}'s tokenizer differs from the student's ({student.source}); "
                "an online teacher needs the student's vocabulary (different vocabularies are not aligned)")
        self._online = OnlineTeacher(teacher.model, self.params.teacher_model).to(device)
        self._tokenizer = student.tokenizer

    def packing_problem(self) -> str | None:
        if self.params.on_policy > 0:
            return "on-policy rollouts (loss.params.on_policy) rebuild padded rows"
        return super().packing_problem()

    def generates(self) -> str | None:
        return "loss.params.on_policy" if self.params.on_policy > 0 else None

    def on_policy_batch(self, batch: dict[str, Any], model: Any, seed: int, step: int) -> dict[str, Any]:
        """GKD: the share ``on_policy`` of the batch's samples continued by ``model`` now."""
        p = self.params
        if p.on_policy == 0:
            return batch
        from kpod.losses.on_policy import rollout_batch

        return rollout_batch(batch, model, self._tokenizer, p.on_policy, seed, step, p.on_policy_max_new_tokens,
                             p.on_policy_temperature)

    def _online_teacher(self) -> Any:
        if self._online is None:
            raise RuntimeError("kd with teacher_model: call bind(student, device) before the first batch")
        return self._online

    def _teacher_rows_at(self, batch: dict[str, Any], mask: torch.Tensor) -> torch.Tensor:
        """The online teacher's head input ``[N, H_t]`` at the N targets of ``mask`` (row-major)."""
        shifted = self._online_teacher().hidden(batch)[:, :-1]  # causal only (bind refuses the rest)
        flat = mask.reshape(-1).nonzero().squeeze(1)
        return shifted.reshape(-1, shifted.size(-1)).index_select(0, flat.to(shifted.device))

    def _stored_divergence(self, batch: dict[str, Any], mask: torch.Tensor, sl: slice, student_at: Any,
                           device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """D over the stored top-k (with its tail bucket, or renormalised) at the targets of ``mask``
        (0 where there is no teacher distribution), and where there is one."""
        p = self.params
        ids_np, logp_np, tail_np, has_np = self.teacher_rows(batch, mask, sl)
        ids = torch.from_numpy(ids_np).to(device)
        valid = ids >= 0
        student = student_at(ids.clamp_min(0))
        teacher = torch.from_numpy(logp_np).to(device) / p.temperature
        tail = torch.from_numpy(tail_np).to(device) if p.buckets == "tail" else None  # T = 1 there
        s_b, t_b = bucket_logprobs(student, teacher, valid, p.buckets, tail)
        has = torch.from_numpy(has_np).to(device)
        div = token_divergence(s_b, t_b, p.divergence, p.beta)
        return torch.where(has, div, torch.zeros_like(div)), has

    def _mix(self, nll: torch.Tensor, mask: torch.Tensor,
             divergence: Callable[[], tuple[torch.Tensor, torch.Tensor | None]],
             batch: dict[str, Any], is_encoder_decoder: bool, vocab: int) -> TokenLoss:
        """(1 − α)·CE + α·T²·D at the targets; ``divergence()`` gives D ``[N]`` at the targets of
        ``mask`` in row-major order, and where the teacher has a distribution (None: everywhere;
        elsewhere α = 0, the CE alone)."""
        p = self.params
        if mask.any():
            div, has = divergence()
            div = div * p.temperature**2
            flat = mask.reshape(-1).nonzero().squeeze(1)
            alpha = torch.full_like(div, p.alpha)
            if has is not None:
                alpha = torch.where(has, alpha, torch.zeros_like(alpha))
            if "on_policy" in batch:  # a rolled-out row: the divergence only (no CE on the student's own text)
                rows = mask.nonzero()[:, 0]
                alpha = torch.where(batch["on_policy"].to(div.device)[rows], torch.ones_like(div), alpha)
            mixed = (1.0 - alpha) * nll.reshape(-1).index_select(0, flat) + alpha * div
            nll = torch.zeros_like(nll).reshape(-1).index_put((flat,), mixed).view(nll.shape)
        return self._weights(nll, None, batch, is_encoder_decoder, vocab)

    def __call__(self, logits: torch.Tensor, batch: dict[str, Any], is_encoder_decoder: bool) -> TokenLoss:
        nll, mask, sl = per_token_nll(logits, batch["labels"], is_encoder_decoder)
        shifted = logits if is_encoder_decoder else logits[:, :-1]
        flat = mask.reshape(-1).nonzero().squeeze(1)
        p = self.params

        def rows() -> torch.Tensor:
            return shifted.reshape(-1, shifted.size(-1)).index_select(0, flat)

        def student_at(ids: torch.Tensor) -> torch.Tensor:
            return torch.log_softmax(rows().float() / p.temperature, -1).gather(1, ids)

        def divergence() -> tuple[torch.Tensor, torch.Tensor | None]:
            if p.teacher_model is None:
                return self._stored_divergence(batch, mask, sl, student_at, nll.device)
            teacher = self._online_teacher()
            teacher_logits = teacher.head(self._teacher_rows_at(batch, mask)).to(nll.device)
            return full_divergence(rows(), teacher_logits, p.divergence, p.beta, p.temperature), None

        return self._mix(nll, mask, divergence, batch, is_encoder_decoder, logits.size(-1))

    def from_hidden(self, hidden: torch.Tensor, head: torch.nn.Linear, batch: dict[str, Any],
                    is_encoder_decoder: bool, chunk_tokens: int) -> TokenLoss:
        from kpod.losses.chunked import compute_dtype, linear_token_nll

        nll, mask, sl = linear_token_nll(hidden, head.weight, head.bias, batch["labels"], is_encoder_decoder, chunk_tokens)
        shifted = hidden if is_encoder_decoder else hidden[:, :-1]
        flat = mask.reshape(-1).nonzero().squeeze(1)
        p = self.params

        def rows() -> torch.Tensor:
            return shifted.reshape(-1, shifted.size(-1)).index_select(0, flat)

        def student_at(ids: torch.Tensor) -> torch.Tensor:
            return linear_logprobs_at(rows(), head.weight, head.bias, ids, chunk_tokens, p.temperature)

        def divergence() -> tuple[torch.Tensor, torch.Tensor | None]:
            if p.teacher_model is None:
                return self._stored_divergence(batch, mask, sl, student_at, nll.device)
            teacher = self._online_teacher()
            div = linear_divergence(rows(), head.weight, head.bias, self._teacher_rows_at(batch, mask).to(hidden.device),
                                    teacher.head, p.divergence, p.beta, p.temperature, chunk_tokens,
                                    compute_dtype(hidden))
            return div, None

        return self._mix(nll, mask, divergence, batch, is_encoder_decoder, head.weight.shape[0])
