"""Dynamic weighting strategies: the weight of a token is computed at every training step from the
current student's distribution at that token, inside the loss (kpod/losses/dynamic.py).

* ``dft`` — Dynamic Fine-Tuning (Wu et al., "On the Generalization of SFT: A Reinforcement
  Learning Perspective with Reward Rectification", ICLR 2026): ``w_t = sg(p_θ(y_t))``, so the loss
  is ``−sg(p)·log p``. Tokens the student already finds likely weigh more.
* ``entropy`` — the student's predictive entropy at the position, ``w_t = H_t / log|V|`` in
  [0, 1]: uncertain positions weigh more; with ``select: {policy: top_k, k: 0.2}`` this is
  SE-KD's student-entropy-selected positions on the hard targets.

A dynamic strategy has no static weights (``compute`` returns None: Eq. 8's difficulty sees
uniform weights). Its :meth:`DynamicStrategy.snapshot` is the signal under the initial student, as
character spans, for ``kpod weights`` and ``kpod weights --compare``.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch

from kpod.data.records import CharSpanWeights
from kpod.registry import WEIGHTING
from kpod.weighting.base import WeightingContext, WeightingStrategy


class DynamicStrategy(WeightingStrategy):
    """Base of the strategies whose signal comes from the student's distribution at each step."""

    dynamic: ClassVar[bool] = True
    needs_entropy: ClassVar[bool] = False

    def compute(self, ctx: WeightingContext) -> CharSpanWeights | None:
        self.report = {"dynamic": True, "signal": self.name}
        return None

    def score(self, nll: torch.Tensor, entropy: torch.Tensor | None, vocab_size: int) -> torch.Tensor:
        """The signal per target token from its NLL (and the position's entropy), both detached."""
        raise NotImplementedError(f"{type(self).__name__}.score")

    def snapshot(self, ctx: WeightingContext) -> CharSpanWeights:
        """The signal under the student as given (the initial student), as character spans."""
        from kpod.weighting.token_scores import rationale_token_stats, spans_from_token_scores

        student, template = ctx.student_and_template(self.name)
        if student.is_encoder_decoder:
            raise ValueError(f"weighting {self.name}: the snapshot scores causal students only")
        stats = rationale_token_stats(student.model.to(ctx.device), student.tokenizer, ctx.records, template,
                                      ctx.device, entropy=self.needs_entropy)
        vocab = student.model.get_output_embeddings().weight.shape[0]
        out: CharSpanWeights = {}
        for r in ctx.records:
            s = stats[r.sample_id]
            ent = torch.from_numpy(s.entropy) if s.entropy is not None else None
            score = self.score(torch.from_numpy(s.nll), ent, vocab).numpy()
            out[r.sample_id] = spans_from_token_scores(s.anchors, score, len(r.rationale))
        return out


@WEIGHTING
class Dft(DynamicStrategy):
    """Dynamic: ``w_t = sg(p_θ(y_t))``, the current student's detached probability of the target,
    at every step inside the loss, so the rationale loss is ``−sg(p)·log p`` (DFT: Wu et al., "On the
    Generalization of SFT: A Reinforcement Learning Perspective with Reward Rectification", ICLR 2026)."""

    name: ClassVar[str] = "dft"

    def score(self, nll: torch.Tensor, entropy: torch.Tensor | None, vocab_size: int) -> torch.Tensor:
        return torch.exp(-nll.detach())


@WEIGHTING
class Entropy(DynamicStrategy):
    """Dynamic: ``w_t = H(p_θ(· | y_<t)) / log|V|``, the current student's predictive entropy at
    the position normalised to [0, 1], at every step inside the loss; with ``select: {policy: top_k,
    k: 0.2}`` SE-KD's student-entropy-selected positions on the hard targets."""

    name: ClassVar[str] = "entropy"
    needs_entropy: ClassVar[bool] = True

    def score(self, nll: torch.Tensor, entropy: torch.Tensor | None, vocab_size: int) -> torch.Tensor:
        if entropy is None:
            raise ValueError("weighting entropy: the loss gave no entropy")
        return (entropy.detach() / math.log(vocab_size)).clamp(0.0, 1.0)
