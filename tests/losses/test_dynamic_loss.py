"""Dynamic token weights inside the loss (kpod/losses/dynamic.py), on hand-made logits and
hidden states: each signal's defining property, the top_k count, no gradient through the weight,
and the chunked path equal to the full-logits path.

Tolerances: fp32 throughout; chunked vs full values rtol 1e-5 / atol 1e-6, gradients rtol 1e-5 /
atol 1e-6 (the chunked head sums in another order); exact where nothing is recomputed.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kpod.data.tokenize import IGNORE_INDEX
from kpod.losses.base import token_entropy
from kpod.losses.dynamic import DynamicWeights
from kpod.losses.token_ce import KpodLoss, StdCotLoss
from kpod.weighting.dynamic import Dft, Entropy
from kpod.weighting.select import kept_count, top_k_mask


def _batch(seed: int = 0, b: int = 3, t: int = 10, v: int = 17):
    """A causal batch: labels with a prompt (−100), rationale targets and two answer tokens per row."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, v, (b, t), generator=g)
    labels[:, :2] = IGNORE_INDEX
    labels[2, 7:] = IGNORE_INDEX  # a shorter row (padding)
    is_answer = torch.zeros(b, t, dtype=torch.bool)
    is_answer[0, -2:] = is_answer[1, -2:] = True
    is_answer[2, 5:7] = True
    weights = (labels != IGNORE_INDEX).float()
    batch = {"labels": labels, "is_answer": is_answer, "weights": weights}
    logits = torch.randn(b, t, v, generator=g) * 3
    return batch, logits


def _loss(signal, policy="weight", k=1.0, answer_weight=1.0):
    loss = KpodLoss(KpodLoss.Params(answer_weight=answer_weight))
    loss.use_dynamic(DynamicWeights(signal, policy, k))
    return loss


def test_dft_weight_is_the_detached_probability_of_the_target():
    batch, logits = _batch()
    tl = _loss(Dft(), answer_weight=0.5)(logits, batch, False)
    p = torch.softmax(logits[:, :-1].float(), -1).gather(2, batch["labels"][:, 1:].clamp_min(0)[..., None]).squeeze(-1)
    rat = tl.mask & ~tl.is_answer
    torch.testing.assert_close(tl.weight[rat], p[rat], rtol=1e-6, atol=1e-7)
    assert torch.all(tl.weight[tl.is_answer] == 0.5)  # the answer NLL keeps the loss's own weight
    assert torch.all(tl.weight[~tl.mask] == 0)
    assert not tl.weight.requires_grad


def test_entropy_ranks_a_flat_distribution_above_a_peaked_one():
    v = 11
    logits = torch.zeros(1, 3, v)
    logits[0, 1, 3] = 12.0  # position 1 peaked, position 0 flat
    labels = torch.tensor([[IGNORE_INDEX, 3, 4]])
    batch = {"labels": labels, "is_answer": torch.zeros(1, 3, dtype=torch.bool), "weights": torch.ones(1, 3)}
    tl = _loss(Entropy())(logits, batch, False)
    flat, peaked = float(tl.weight[0, 0]), float(tl.weight[0, 1])
    assert flat == pytest.approx(1.0, abs=1e-6)  # H = log|V|, normalised to 1
    assert flat > peaked and peaked < 0.01
    ent = token_entropy(logits[:, :-1], labels[:, 1:] != IGNORE_INDEX)
    assert float(ent[0, 0]) == pytest.approx(math.log(v), rel=1e-6)


@pytest.mark.parametrize("k", [0.1, 0.3, 0.5, 0.75, 1.0])
def test_top_k_keeps_exactly_ceil_k_n_per_sequence(k):
    g = torch.Generator().manual_seed(1)
    scores = torch.rand(4, 13, generator=g)
    scores[1, :6] = 0.5  # ties: the earlier positions win
    eligible = torch.rand(4, 13, generator=g) < 0.7
    seq = torch.arange(4)[:, None].expand(4, 13)
    keep = top_k_mask(scores, seq, eligible, k)
    assert not (keep & ~eligible).any()
    for r in range(4):
        n = int(eligible[r].sum())
        assert int(keep[r].sum()) == math.ceil(k * n - 1e-9) == kept_count(n, k)
        if keep[r].any() and (eligible[r] & ~keep[r]).any():  # every kept score ≥ every dropped one
            assert scores[r][keep[r]].min() >= scores[r][eligible[r] & ~keep[r]].max()
    assert kept_count(10, 0.3) == 3  # float rounding does not add a token


def test_top_k_on_packed_sequences_counts_per_sequence_not_per_row():
    scores = torch.arange(10.0)[None]
    seq = torch.tensor([[0, 0, 0, 0, 1, 1, 1, 1, 1, 1]])
    keep = top_k_mask(scores, seq, torch.ones(1, 10, dtype=torch.bool), 0.5)
    assert keep.tolist() == [[False, False, True, True, False, False, False, True, True, True]]


def test_dft_top_k_mask_and_window_denominator_is_the_kept_count():
    batch, logits = _batch(3)
    loss = _loss(Dft(), "top_k", 0.5)
    tl = loss(logits, batch, False)
    rat = tl.mask & ~tl.is_answer
    win = loss.window_weights(batch, False)
    for r in range(3):
        n = int(rat[r].sum())
        kept = tl.weight[r][rat[r]]
        assert set(kept.tolist()) <= {0.0, 1.0} and int(kept.sum()) == math.ceil(0.5 * n)
        assert float(win[r][rat[r]].sum()) == pytest.approx(math.ceil(0.5 * n))
    assert float(win.sum()) == pytest.approx(float(tl.weight.sum()))  # the engine's Σw is the kept weights'


@pytest.mark.parametrize("signal", [Dft(), Entropy()])
def test_dynamic_weights_receive_no_gradient(signal):
    """The gradient is that of Σ sg(w)·ℓ: the same as weighting the NLL by fixed, precomputed w."""
    batch, logits = _batch(5)
    leaf = logits.clone().requires_grad_()
    tl = _loss(signal)(leaf, batch, False)
    (tl.nll * tl.weight).sum().backward()
    fixed = tl.weight.detach().clone()
    leaf2 = logits.clone().requires_grad_()
    plain = StdCotLoss()(leaf2, batch, False)
    (plain.nll * fixed).sum().backward()
    torch.testing.assert_close(leaf.grad, leaf2.grad, rtol=0, atol=0)


@pytest.mark.parametrize(("signal", "policy"), [(Dft(), "weight"), (Entropy(), "weight"), (Entropy(), "top_k")])
@pytest.mark.parametrize("chunk", [1, 4, 1000])
def test_chunked_dynamic_loss_equals_the_full_logits_loss(signal, policy, chunk):
    batch, _ = _batch(7, v=23)
    g = torch.Generator().manual_seed(2)
    hidden = torch.randn(3, 10, 6, generator=g)
    head = torch.nn.Linear(6, 23, bias=True)
    with torch.no_grad():
        head.weight.copy_(torch.randn(23, 6, generator=g))
        head.bias.copy_(torch.randn(23, generator=g))
    loss = _loss(signal, policy, 0.4)
    h1 = hidden.clone().requires_grad_()
    full = loss(F.linear(h1, head.weight, head.bias), batch, False)
    (full.nll * full.weight).sum().backward()
    g_full = [h1.grad.clone(), head.weight.grad.clone(), head.bias.grad.clone()]
    head.zero_grad()
    h2 = hidden.clone().requires_grad_()
    chunked = loss.from_hidden(h2, head, batch, False, chunk)
    (chunked.nll * chunked.weight).sum().backward()
    torch.testing.assert_close(chunked.nll, full.nll, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(chunked.weight, full.weight, rtol=1e-5, atol=1e-6)
    for a, b in zip([h2.grad, head.weight.grad, head.bias.grad], g_full):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_a_loss_that_ignores_token_weights_refuses_a_dynamic_strategy():
    with pytest.raises(ValueError, match="does not read token weights"):
        StdCotLoss().use_dynamic(DynamicWeights(Dft()))
    with pytest.raises(ValueError, match="does not read token weights"):
        KpodLoss(KpodLoss.Params(weights="uniform")).use_dynamic(DynamicWeights(Dft()))
