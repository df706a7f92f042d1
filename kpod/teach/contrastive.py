"""SCOTT's contrastive decoding step for a teacher whose logits kpod can read (local HF backend).

Wang et al., ACL 2023 (released ``contrastive_decoding_rationalization.py``): the teacher is run
twice in lock-step, prompted with the gold answer ``a*`` and with a perturbed answer ``a'`` (or an
empty answer); the next rationale token is

    argmax_t  log P(t | q, a*, r_<j) / τ  −  γ · log P(t | q, a', r_<j),     γ = 0.5 (``interpolation``)

so tokens that become more plausible *because of* the gold answer win. Greedy; the stop test is
made on the plain (first) distribution before the contrast, as in the release. API teachers give
no such logits: there kpod can only prompt with the answer (rationalisation), see docs/baselines.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["contrastive_scores"]


def contrastive_scores(
    logits_gold: torch.Tensor, logits_perturbed: torch.Tensor, gamma: float = 0.5, temperature: float = 1.0
) -> torch.Tensor:
    """``log_softmax(z*/τ) − γ·log_softmax(z')`` over the vocabulary, ``[..., V]`` in fp32."""
    if logits_gold.shape != logits_perturbed.shape:
        raise ValueError(f"shapes differ: {tuple(logits_gold.shape)} vs {tuple(logits_perturbed.shape)}")
    if temperature <= 0 or gamma < 0:
        raise ValueError(f"need temperature > 0 and gamma >= 0, got {temperature}, {gamma}")
    lp_gold = F.log_softmax(logits_gold.float() / temperature, dim=-1)
    lp_pert = F.log_softmax(logits_perturbed.float(), dim=-1)
    return lp_gold - gamma * lp_pert
