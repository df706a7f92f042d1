"""The ``kd`` loss with an online teacher (``teacher_model``): the full-vocabulary divergence equals
a hand computation from both models' logits, chunked = full and packed = padded in value and
gradient, a student distilled from itself has no divergence, and a teacher of another vocabulary
or an encoder-decoder student stops with an error naming the field."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from kpod.data.collate import StageCollator
from kpod.data.sources import Arith
from kpod.data.template import PromptTemplate
from kpod.losses.base import per_token_nll
from kpod.losses.kd import KdLoss
from kpod.losses.online_teacher import full_divergence, linear_divergence
from kpod.models.student import StudentError, save_student
from tests.helpers import tiny_lm
from tests.losses.test_kd import (
    assert_packed_equals_padded,
    chunked_loss,
    forward,
    full_loss,
    grads,
    reduced,
)

TEMPLATE = PromptTemplate()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    records = Arith(Arith.Params(n_train=6, n_validation=0, n_test=0, n_ood=0, max_steps=3)).load()["train"]
    student, teacher = tiny_lm(records, TEMPLATE, 150, 0), tiny_lm(records, TEMPLATE, 150, 1)  # same tokenizer, other weights
    root = tmp_path_factory.mktemp("online")
    save_student(teacher, str(root / "teacher"))
    save_student(student, str(root / "self"))
    collator = StageCollator(records, TEMPLATE, student.tokenizer, False)
    return records, student, teacher, collator, root


def online(world, name="teacher", **params):
    _, student, _, _, root = world
    loss = KdLoss(KdLoss.Params(teacher_model=str(root / name), **params))
    loss.bind(student, "cpu")
    return loss


def test_the_online_divergence_is_the_full_vocabulary_kl_of_both_models(world):
    records, st, teacher, collator, _ = world
    batch = collator([r.sample_id for r in records], {r.sample_id: i % 2 for i, r in enumerate(records)})
    with torch.no_grad():
        tl = full_loss(online(world, alpha=1.0, temperature=2.0, weights="uniform"), st.model, batch)
        s_logits, t_logits = forward(st.model, batch)[:, :-1], forward(teacher.model, batch)[:, :-1]
    _, mask, _ = per_token_nll(forward(st.model, batch), batch["labels"], False)
    p = torch.log_softmax(s_logits[mask] / 2.0, -1)
    q = torch.log_softmax(t_logits[mask] / 2.0, -1)
    hand = 4.0 * (q.exp() * (q - p)).sum(-1)  # T² · KL(q ‖ p)
    assert mask.sum() > 20 and (hand > 0).all()
    torch.testing.assert_close(tl.nll[tl.mask], hand, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("params", [
    {"divergence": "forward_kl"},
    {"divergence": "reverse_kl", "alpha": 1.0},
    {"divergence": "jsd", "beta": 0.3, "temperature": 2.0},
])
def test_chunked_equals_full_in_value_and_gradient(world, params):
    records, st, _, collator, _ = world
    batch = collator([r.sample_id for r in records], {r.sample_id: i % 2 for i, r in enumerate(records)})
    loss = online(world, **params)
    a = full_loss(loss, st.model, batch)
    ga = grads(st.model, reduced(a))
    b = chunked_loss(loss, st.model, batch)
    gb = grads(st.model, reduced(b))
    torch.testing.assert_close(b.nll, a.nll, rtol=1e-5, atol=1e-5)
    assert len(ga) == len(gb) > 0
    for x, y in zip(gb, ga):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-6)


def test_linear_divergence_gradient_matches_autograd_on_small_tensors():
    torch.manual_seed(0)
    h = torch.randn(9, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(13, 5, dtype=torch.float64, requires_grad=True)
    b = torch.randn(13, dtype=torch.float64, requires_grad=True)
    th = torch.randn(9, 4, dtype=torch.float64)
    head = torch.nn.Linear(4, 13).double()
    for kind in ("forward_kl", "reverse_kl", "jsd"):
        ours = linear_divergence(h, w, b, th, head, kind, 0.4, 1.5, chunk_tokens=4)
        ref = full_divergence(h @ w.T + b, head(th), kind, 0.4, 1.5)
        torch.testing.assert_close(ours, ref)
        weights = torch.linspace(0.5, 2.0, 9, dtype=torch.float64)
        g_ours = torch.autograd.grad((ours * weights).sum(), [h, w, b])
        g_ref = torch.autograd.grad((ref * weights).sum(), [h, w, b])
        for x, y in zip(g_ours, g_ref):
            torch.testing.assert_close(x, y)


def test_packed_equals_padded(world):
    records, st, _, collator, _ = world
    assert_packed_equals_padded(online(world, divergence="jsd"), st.model, collator, [r.sample_id for r in records])


def test_a_student_beside_itself_has_no_divergence(world):
    records, st, _, collator, _ = world
    with torch.no_grad():
        tl = full_loss(online(world, "self", alpha=1.0), st.model, collator([r.sample_id for r in records]))
    assert tl.mask.sum() > 0
    assert tl.nll[tl.mask].abs().max().item() < 1e-5


def test_a_teacher_with_another_vocabulary_is_an_error_naming_the_field(world, tmp_path):
    records, st, _, _, _ = world
    save_student(tiny_lm(records, TEMPLATE, 120, 1), str(tmp_path / "other"))
    loss = KdLoss(KdLoss.Params(teacher_model=str(tmp_path / "other")))
    with pytest.raises(StudentError, match=r"loss.params.teacher_model: .*other's tokenizer differs from the student's"):
        loss.bind(st, "cpu")
    with pytest.raises(StudentError, match=r"loss.params.teacher_model: .*nowhere not found"):
        KdLoss(KdLoss.Params(teacher_model=str(tmp_path / "nowhere"))).bind(st, "cpu")


def test_exactly_one_teacher():
    with pytest.raises(ValidationError, match="set exactly one"):
        KdLoss.Params()
    with pytest.raises(ValidationError, match="set exactly one"):
        KdLoss.Params(teacher_store="s", teacher_model="m")
    assert KdLoss.Params(teacher_model="m", temperature=2.0).buckets == "tail"  # buckets: a store's only
