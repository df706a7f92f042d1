"""Divergences over a teacher's stored top-k: hand computations, the chunked log-probs against
full logits (value and gradient), padding, and the teacher's detachment."""

from __future__ import annotations

import math

import pytest
import torch

from kpod.losses.divergence import bucket_logprobs, linear_logprobs_at, token_divergence


def logs(*probs: float) -> torch.Tensor:
    return torch.log(torch.tensor([list(probs)], dtype=torch.float32))


ALL = torch.ones(1, 2, dtype=torch.bool)
# teacher top-2 probabilities 0.5, 0.3 (tail 0.2); student at the same ids 0.25, 0.25 (tail 0.5)
Q, P = logs(0.5, 0.3), logs(0.25, 0.25)


def test_forward_kl_with_a_tail_bucket_equals_the_hand_computation():
    p, q = bucket_logprobs(P, Q, ALL, "tail")
    want = 0.5 * math.log(0.5 / 0.25) + 0.3 * math.log(0.3 / 0.25) + 0.2 * math.log(0.2 / 0.5)
    assert token_divergence(p, q, "forward_kl").item() == pytest.approx(want, rel=1e-5)


def test_forward_kl_renormalised_over_the_top_k_equals_the_hand_computation():
    p, q = bucket_logprobs(P, Q, ALL, "renorm")
    want = 0.625 * math.log(0.625 / 0.5) + 0.375 * math.log(0.375 / 0.5)
    assert token_divergence(p, q, "forward_kl").item() == pytest.approx(want, rel=1e-5)


def test_reverse_kl_with_a_tail_bucket_equals_the_hand_computation():
    p, q = bucket_logprobs(P, Q, ALL, "tail")
    want = 0.25 * math.log(0.25 / 0.5) + 0.25 * math.log(0.25 / 0.3) + 0.5 * math.log(0.5 / 0.2)
    assert token_divergence(p, q, "reverse_kl").item() == pytest.approx(want, rel=1e-5)


def test_jsd_at_half_is_symmetric_and_equals_the_hand_computation():
    p, q = bucket_logprobs(P, Q, ALL, "tail")
    qs, ps = [0.5, 0.3, 0.2], [0.25, 0.25, 0.5]
    ms = [(a + b) / 2 for a, b in zip(qs, ps)]
    want = 0.5 * sum(a * math.log(a / m) for a, m in zip(qs, ms)) + 0.5 * sum(b * math.log(b / m) for b, m in zip(ps, ms))
    forward = token_divergence(p, q, "jsd", beta=0.5).item()
    swapped = token_divergence(q, p, "jsd", beta=0.5).item()
    assert forward == pytest.approx(want, rel=1e-5)
    assert swapped == pytest.approx(forward, rel=1e-5)
    assert 0 < forward < math.log(2)


def test_jsd_rejects_the_end_points_which_are_the_two_kls():
    with pytest.raises(ValueError, match="forward_kl"):
        token_divergence(P, Q, "jsd", beta=0.0)


def test_identical_distributions_give_zero_and_a_zero_gradient():
    student = torch.log(torch.tensor([[0.5, 0.3]])).requires_grad_(True)
    for kind in ("forward_kl", "reverse_kl", "jsd"):
        p, q = bucket_logprobs(student, student.detach().clone(), ALL, "tail")
        d = token_divergence(p, q, kind)
        (grad,) = torch.autograd.grad(d.sum(), student)
        assert d.item() == pytest.approx(0.0, abs=1e-6), kind
        assert grad.abs().max().item() < 1e-5, kind


def test_a_padded_bucket_changes_nothing_and_keeps_gradients_finite():
    student = torch.log(torch.tensor([[0.25, 0.25, 0.1]])).requires_grad_(True)
    teacher = torch.log(torch.tensor([[0.5, 0.3, 0.0]]))  # the third id is padding (and log 0 = −inf)
    valid = torch.tensor([[True, True, False]])
    for mode in ("tail", "renorm"):
        for kind in ("forward_kl", "reverse_kl", "jsd"):
            p3, q3 = bucket_logprobs(student, teacher, valid, mode)
            p2, q2 = bucket_logprobs(student[:, :2], teacher[:, :2], ALL, mode)
            d3, d2 = token_divergence(p3, q3, kind), token_divergence(p2, q2, kind)
            (grad,) = torch.autograd.grad(d3.sum(), student)
            assert d3.item() == pytest.approx(d2.item(), rel=1e-5, abs=1e-7), (mode, kind)
            assert torch.isfinite(grad).all() and grad[0, 2].item() == 0.0, (mode, kind)


def test_the_teacher_receives_no_gradient():
    teacher = logs(0.5, 0.3).requires_grad_(True)
    student = logs(0.25, 0.25).requires_grad_(True)
    p, q = bucket_logprobs(student, teacher, ALL, "tail")
    token_divergence(p, q, "jsd").sum().backward()
    assert teacher.grad is None and student.grad is not None


def _head(seed: int, n: int = 7, hidden: int = 5, vocab: int = 11, k: int = 4):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, hidden, generator=g, dtype=torch.float64)
    w = torch.randn(vocab, hidden, generator=g, dtype=torch.float64)
    b = torch.randn(vocab, generator=g, dtype=torch.float64)
    ids = torch.stack([torch.randperm(vocab, generator=g)[:k] for _ in range(n)])
    return h, w, b, ids


@pytest.mark.parametrize("chunk,temperature", [(1, 1.0), (3, 1.0), (3, 2.0), (100, 0.5)])
def test_chunked_logprobs_equal_full_logits_in_value_and_gradient(chunk, temperature):
    h, w, b, ids = _head(0)
    upstream = torch.randn(ids.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    leaves = [t.clone().requires_grad_(True) for t in (h, w, b)]
    full = torch.log_softmax((leaves[0] @ leaves[1].T + leaves[2]) / temperature, -1).gather(1, ids)
    full_grads = torch.autograd.grad((full * upstream).sum(), leaves)
    leaves2 = [t.clone().requires_grad_(True) for t in (h, w, b)]
    got = linear_logprobs_at(leaves2[0], leaves2[1], leaves2[2], ids, chunk, temperature)
    got_grads = torch.autograd.grad((got * upstream).sum(), leaves2)
    torch.testing.assert_close(got.double(), full, rtol=1e-5, atol=1e-6)
    for a, e in zip(got_grads, full_grads):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-6)


def test_with_every_id_stored_forward_kl_is_the_full_vocabulary_kl():
    h, w, b, _ = _head(2, k=11)
    ids = torch.arange(11).repeat(h.shape[0], 1)
    teacher_logits = torch.randn(h.shape[0], 11, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    teacher = torch.log_softmax(teacher_logits, -1).float()
    student = linear_logprobs_at(h.float(), w.float(), b.float(), ids, 4)
    p, q = bucket_logprobs(student, teacher, torch.ones_like(ids, dtype=torch.bool), "tail")
    got = token_divergence(p, q, "forward_kl")
    want = torch.nn.functional.kl_div(torch.log_softmax((h @ w.T + b), -1), teacher.double(),
                                      reduction="none", log_target=True).sum(-1)
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)


def test_bad_shapes_and_parameters_are_refused():
    h, w, b, ids = _head(4)
    with pytest.raises(ValueError, match=r"ids must be \[N, k\]"):
        linear_logprobs_at(h, w, b, ids[:3], 2)
    with pytest.raises(ValueError, match="temperature"):
        linear_logprobs_at(h, w, b, ids, 2, temperature=0.0)
    with pytest.raises(ValueError, match="bucket mode"):
        bucket_logprobs(P, Q, ALL, "drop")  # type: ignore[arg-type]


def test_a_stored_teacher_tail_is_used_instead_of_one_minus_the_rounded_top_k():
    # the top-k log-probs were rounded (here: their sum is off by 0.05); the stored tail is exact
    rounded_q = logs(0.52, 0.33)
    p, q = bucket_logprobs(P, rounded_q, ALL, "tail", teacher_tail=torch.log(torch.tensor([0.2])))
    assert q[0, 2].exp().item() == pytest.approx(0.2, rel=1e-6)
    _, q_derived = bucket_logprobs(P, rounded_q, ALL, "tail")
    assert q_derived[0, 2].exp().item() == pytest.approx(0.15, rel=1e-4)
