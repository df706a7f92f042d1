"""SCOTT's contrastive decoding step for a teacher whose logits kpod can read (local HF backend).

Wang et al., ACL 2023 (released ``contrastive_decoding_rationalization.py``): the teacher is run
twice in lock-step, prompted with the gold answer ``a*`` and with a perturbed answer ``a'`` (or an
empty answer); the next rationale token is

    argmax_t  log P(t | q, a*, r_<j) / τ  −  γ · log P(t | q, a', r_<j),     γ = 0.5 (``interpolation``)

so tokens that become more plausible *because of* the gold answer win. Greedy; the stop test is
made on the plain (first) distribution before the contrast, as in the release. API teachers give
no such logits: there kpod can only prompt with the answer (rationalisation), see docs/baselines.md.

:func:`contrastive_greedy` is the loop for a batch: two streams (prompts with a* and with a', or
roles swapped for counterfactual rationales), each with its own KV cache, fed the same token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from kpod.eval.generate import CausalStream

__all__ = ["Decoded", "contrastive_greedy", "contrastive_scores", "open_stream"]


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


# --------------------------------------------------------------------------------------
# the lock-step greedy loop
# --------------------------------------------------------------------------------------
@dataclass
class Decoded:
    """One decoded rationale: its tokens (without the stop token) and whether a stop token ended it."""

    tokens: list[int]
    stopped: bool


class _Seq2SeqStream:
    """A right-padded batch of encoder inputs of an encoder-decoder LM: encoded once, then the
    decoder is fed one token per row per step from ``decoder_start_token_id``."""

    def __init__(self, model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
        self.model, self.mask, self.cache = model, attention_mask, None
        self.encoded = model.get_encoder()(input_ids=input_ids, attention_mask=attention_mask)
        start = model.config.decoder_start_token_id
        self.pending = torch.full((len(input_ids), 1), start, dtype=torch.long, device=input_ids.device)

    def logits(self) -> torch.Tensor:
        out = self.model(encoder_outputs=self.encoded, attention_mask=self.mask, decoder_input_ids=self.pending,
                         cache=self.cache, use_cache=True)
        self.cache = out.cache
        return out.logits[:, -1, :]

    def keep(self, rows: torch.Tensor) -> None:
        self.cache.batch_select_indices(rows)
        self.mask = self.mask[rows]
        self.encoded.last_hidden_state = self.encoded.last_hidden_state[rows]

    def feed(self, tokens: torch.Tensor) -> None:
        self.pending = tokens[:, None]


Stream = CausalStream | _Seq2SeqStream


def open_stream(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Stream:
    """The stream for ``model``'s kind; causal prompts must be left-padded, encoder inputs right-padded."""
    kind = _Seq2SeqStream if model.config.is_encoder_decoder else CausalStream
    return kind(model, input_ids, attention_mask)


@torch.no_grad()
def contrastive_greedy(
    gold: Stream,
    perturbed: Stream,
    *,
    max_new_tokens: int,
    stop_ids: set[int],
    gamma: float = 0.5,
    temperature: float = 1.0,
) -> list[Decoded]:
    """SCOTT's decoder for a batch: both streams advance in lock-step on the same chosen token.

    Per row and step, as the release: the row stops if the plain gold-prompt argmax is a stop
    token; otherwise the token is ``argmax contrastive_scores``, and the row stops if that is a
    stop token. A finished row leaves both batches at once; at most ``max_new_tokens`` tokens."""
    alive = list(range(gold.pending.shape[0]))  # row of the current batch → original index
    out = [Decoded([], False) for _ in alive]
    for step in range(max_new_tokens):
        z_gold, z_pert = gold.logits(), perturbed.logits()
        plain = z_gold.argmax(dim=-1).tolist()  # argmax of log_softmax(z/τ) is argmax z
        chosen = contrastive_scores(z_gold, z_pert, gamma, temperature).argmax(dim=-1)
        keep = []
        for row, (orig, p, c) in enumerate(zip(alive, plain, chosen.tolist())):
            if p in stop_ids or c in stop_ids:
                out[orig].stopped = True
            else:
                out[orig].tokens.append(c)
                keep.append(row)
        if not keep or step == max_new_tokens - 1:
            break
        if len(keep) < len(alive):
            rows = torch.tensor(keep, device=chosen.device)
            gold.keep(rows)
            perturbed.keep(rows)
            chosen, alive = chosen[rows], [alive[k] for k in keep]
        gold.feed(chosen)
        perturbed.feed(chosen)
    return out
