"""MCC-KD consistency term, DSbS task shares, SCOTT contrastive scores on hand-made tensors."""

import pytest
import torch

from kpod.losses.consistency import answer_consistency, symmetric_kl
from kpod.losses.task_mix import task_balanced_weights
from kpod.teach.contrastive import contrastive_scores


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(4, 5, 7, generator=g)
    targets = torch.tensor([[1, 2, 3, 4, 0], [1, 2, 3, 4, 0], [5, 2, 3, 4, 6], [1, 1, 1, 1, 1]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [0, 1, 1, 1, 1], [0, 0, 0, 1, 1], [0, 0, 1, 1, 0]], dtype=torch.bool)
    return logits, targets, mask


def test_symmetric_kl_is_zero_iff_equal_and_symmetric():
    a = torch.randn(3, 6)
    assert torch.allclose(symmetric_kl(a, a + 2.0), torch.zeros(3), atol=1e-6)  # same softmax
    b = torch.randn(3, 6)
    assert (symmetric_kl(a, b) > 0).all()
    assert torch.allclose(symmetric_kl(a, b), symmetric_kl(b, a))


def test_zero_when_answer_distributions_agree():
    logits, targets, mask = _batch()
    # rows 0 and 1 share question q; make row 1's answer logits equal row 0's at aligned positions
    logits[1, 2:5] = logits[0, 2:5]
    res = answer_consistency(logits, targets, mask, ["q", "q", "p", "s"])
    assert res.values["q"].item() == pytest.approx(0.0, abs=1e-6)
    assert res.positions["q"] == 3  # common suffix of [3,4,0] and [2,3,4,0]
    assert res.skipped == {"p": "single rationale", "s": "single rationale"}


def test_positive_otherwise_and_gradient_reaches_every_rationale():
    logits, targets, mask = _batch(1)
    logits = logits.clone().requires_grad_(True)
    res = answer_consistency(logits, targets, mask, ["q", "q", "q", "s"])
    # row 2's answer targets [4, 6] share no suffix with [3, 4, 0]: the group has no common span
    assert "q" in res.skipped
    targets2 = targets.clone()
    targets2[2] = torch.tensor([5, 2, 3, 4, 0])
    res = answer_consistency(logits, targets2, mask, ["q", "q", "q", "s"])
    assert res.values["q"].item() > 0
    assert res.positions["q"] == 2  # row 2 has only two answer positions
    res.mean().backward()
    for b in (0, 1, 2):
        assert logits.grad[b].abs().sum() > 0, f"row {b} got no gradient"
    assert logits.grad[3].abs().sum() == 0


def test_shape_errors_are_clear():
    logits, targets, mask = _batch()
    with pytest.raises(ValueError, match="group ids"):
        answer_consistency(logits, targets, mask, ["q"])
    with pytest.raises(ValueError, match="need logits"):
        answer_consistency(logits[0], targets, mask, ["q"] * 4)


def test_task_shares_make_the_engine_reduction_alpha_weighted_task_means():
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 1, 0]], dtype=torch.bool)
    tasks = ["label", "rationale", "label", "rationale"]
    nll = torch.arange(16, dtype=torch.float32).view(4, 4)
    w = task_balanced_weights(mask, tasks, {"label": 0.3, "rationale": 0.7})
    assert w.sum().item() == pytest.approx(1.0)
    engine = (w * nll).sum() / w.sum()
    label_mean = nll[[0, 2]][mask[[0, 2]]].mean()
    rat_mean = nll[[1, 3]][mask[[1, 3]]].mean()
    assert engine.item() == pytest.approx((0.3 * label_mean + 0.7 * rat_mean).item())
    with pytest.raises(KeyError, match="no loss share"):
        task_balanced_weights(mask, ["x"] * 4, {"label": 1.0})


def test_contrastive_scores_favour_tokens_the_gold_answer_makes_likely():
    gold = torch.tensor([2.0, 2.0, 0.0])
    pert = torch.tensor([2.0, 0.0, 0.0])  # token 0 is likely with or without the gold answer
    s = contrastive_scores(gold, pert, gamma=0.5)
    assert int(gold.argmax()) == 0 and int(s.argmax()) == 1
    assert torch.allclose(contrastive_scores(gold, pert, gamma=0.0), torch.log_softmax(gold, -1))
