"""The ``mcc_kd`` loss component: CE per rationale + α · the answer consistency term, its count
for the engine's exact normalisation, the grouped-batch check and the refused fast paths."""

from __future__ import annotations

import pytest
import torch

from kpod.engine.fastpath import FastPathError, resolve_loss_chunk, resolve_packing
from kpod.losses.mcc_kd import MccKdLoss

V = 7


def _loss(alpha: float = 1.0, span: str = "answer_value"):
    return MccKdLoss(MccKdLoss.Params(alpha=alpha, span=span))


def _batch():
    """4 causal rows: q0 (rows 0, 1) and q1 (rows 2, 3); targets at positions 2..5, answer value at 4..5."""
    labels = torch.full((4, 7), -100)
    labels[:, 3:7] = torch.tensor([1, 2, 3, 4])
    labels[1, 3] = 5  # another rationale token: the answers still agree
    is_answer = torch.zeros((4, 7), dtype=torch.bool)
    is_answer[:, 5:7] = True
    return {"labels": labels, "is_answer": is_answer, "answer_value": is_answer.clone(),
            "weights": torch.ones(4, 7), "question_ids": ["q0", "q0", "q1", "q1"], "question_sizes": [2, 2, 2, 2]}


def test_consistency_is_zero_when_answer_distributions_agree_and_positive_otherwise():
    batch = _batch()
    base = torch.randn(1, 7, V).repeat(4, 1, 1)
    base[1, :4] += torch.randn(4, V)  # differs before the answer only
    tl = _loss()(base, batch, False)
    assert tl.extra is not None and float(tl.extra) == pytest.approx(0.0, abs=1e-6)
    assert tl.mask.sum() == 16 and torch.equal(tl.weight, tl.mask.float())  # plain CE on every rationale
    other = base.clone()
    other[3, 4:6] += torch.randn(2, V)  # q1's second answer distribution differs
    assert float(_loss()(other, batch, False).extra) > 1e-4
    assert float(_loss(alpha=0.0)(other, batch, False).extra) == 0.0


def test_gradient_of_the_term_reaches_every_rationale():
    batch = _batch()
    logits = torch.randn(4, 7, V, requires_grad=True)
    _loss()(logits, batch, False).extra.backward()
    for row in range(4):
        assert logits.grad[row, 4:6].abs().sum() > 0, f"row {row} got no gradient"
        assert logits.grad[row, :4].abs().sum() == 0  # only the answer-value positions are compared


def test_extra_count_and_the_grouped_batch_check():
    loss, batch = _loss(), _batch()
    assert loss.extra_count(batch, False) == 2
    single = {**batch, "question_ids": ["q0", "q0", "q1", "q2"], "question_sizes": [2, 2, 1, 1]}
    assert loss.extra_count(single, False) == 1  # a question alone contributes no term
    split = {**batch, "question_sizes": [2, 2, 3, 3]}
    with pytest.raises(ValueError, match=r"'q1' has 2 of its 3 rationales.*train.group_by_question: true"):
        loss.extra_count(split, False)
    sentence = _loss(span="answer_sentence")
    assert sentence.extra_count({**batch, "answer_value": torch.zeros(4, 7, dtype=torch.bool)}, False) == 2
    assert loss.extra_count({**batch, "answer_value": torch.zeros(4, 7, dtype=torch.bool)}, False) == 0


def test_a_loss_has_an_extra_term_exactly_when_it_counts_its_terms():
    """The engine adds (and logs) a window's mean extra term for a loss that overrides
    ``extra_count``: mcc_kd, or a plugin loss built the same way; never for the base's."""
    from kpod.losses.token_ce import KpodLoss

    class PluginWithTerm(KpodLoss):
        def extra_count(self, batch, is_encoder_decoder):
            return len(batch["sample_ids"])

    assert _loss().has_extra_term and PluginWithTerm().has_extra_term
    assert not KpodLoss().has_extra_term and KpodLoss().extra_count(_batch(), False) == 0


def test_fast_paths_refuse_the_loss_with_its_reason():
    model = torch.nn.Module()
    model.get_output_embeddings = lambda: torch.nn.Linear(2, 2)
    assert resolve_loss_chunk("auto", model, _loss(), False) == (0, f"off ({_loss().needs_full_logits})")
    with pytest.raises(FastPathError, match="loss_chunk_tokens: 64: the mcc_kd loss compares full"):
        resolve_loss_chunk(64, model, _loss(), False)
    with pytest.raises(FastPathError, match="train.packing: true: the mcc_kd loss"):
        resolve_packing(True, model, False, 10, torch.device("cpu"), _loss())
