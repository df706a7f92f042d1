"""The ``kd`` loss on a tiny student and a tiny teacher's stored top-k: CE at α = 0, chunked =
full and packed = padded in value and gradient, matching by sample_id and character (batch order,
curriculum cuts), weighted KD with uniform weights = plain KD, and a store of another tokenizer."""

from __future__ import annotations

import pytest
import torch

from kpod.data.collate import StageCollator
from kpod.data.packing import unpack_targets
from kpod.data.sources import Arith
from kpod.data.template import PromptTemplate
from kpod.data.topk_store import TopKStore, TopKStoreError
from kpod.losses.chunked import head_returns_hidden
from kpod.losses.kd import KdLoss
from kpod.losses.token_ce import StdCotLoss
from kpod.teach.rescore import rescore
from tests.helpers import tiny_lm

TEMPLATE = PromptTemplate()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    records = Arith(Arith.Params(n_train=6, n_validation=0, n_test=0, n_ood=0, max_steps=3)).load()["train"]
    student, teacher = tiny_lm(records, TEMPLATE, 150, 0), tiny_lm(records, TEMPLATE, 150, 1)  # same tokenizer, other weights
    assert student.tokenizer.get_vocab() == teacher.tokenizer.get_vocab()
    store = tmp_path_factory.mktemp("store")
    with TopKStore(store, k=8, teacher="tiny-seed1", tokenizer="tiny-bpe-150") as s:
        rescore(teacher.model, teacher.tokenizer, records, TEMPLATE, s, batch_size=4)
    collator = StageCollator(records, TEMPLATE, student.tokenizer, False)
    return records, student, collator, str(store)


def kd(store, **params):
    return KdLoss(KdLoss.Params(teacher_store=store, **params))


def forward(model, batch):
    # as the engine feeds a batch: a packed one by its restarting position ids, no cache
    if batch.get("packed"):
        return model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def full_loss(loss, model, batch):
    return loss(forward(model, batch), batch, False)


def chunked_loss(loss, model, batch, chunk=7):
    with head_returns_hidden(model) as head:
        hidden = forward(model, batch)
    return loss.from_hidden(hidden, head, batch, False, chunk)


def reduced(tl):
    return (tl.weight * tl.nll).sum() / tl.weight.sum()


def grads(model, value):
    model.zero_grad()
    value.backward()
    return [p.grad.detach().clone() for p in model.parameters() if p.grad is not None]


def test_alpha_zero_is_the_cross_entropy(world):
    records, st, collator, store = world
    batch = collator([r.sample_id for r in records])
    with torch.no_grad():
        a = full_loss(kd(store, alpha=0.0), st.model, batch)
        b = full_loss(StdCotLoss(), st.model, batch)
    torch.testing.assert_close(a.nll, b.nll, rtol=1e-6, atol=1e-6)
    assert torch.equal(a.weight, b.weight)


@pytest.mark.parametrize("params", [
    {"divergence": "forward_kl"},
    {"divergence": "reverse_kl", "alpha": 1.0},
    {"divergence": "jsd", "beta": 0.3, "buckets": "renorm", "temperature": 2.0},
])
def test_chunked_equals_full_in_value_and_gradient(world, params):
    records, st, collator, store = world
    batch = collator([r.sample_id for r in records], {r.sample_id: i % 2 for i, r in enumerate(records)})
    loss = kd(store, **params)
    a = full_loss(loss, st.model, batch)
    ga = grads(st.model, reduced(a))
    b = chunked_loss(loss, st.model, batch)
    gb = grads(st.model, reduced(b))
    assert (a.nll[a.mask] > 0).all()
    torch.testing.assert_close(b.nll, a.nll, rtol=1e-5, atol=1e-5)
    for x, y in zip(gb, ga):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-6)


def assert_packed_equals_padded(loss, model, collator, sids, rows_of=2):
    """The loss's per-token values and reduction on a packed batch equal the padded batch's."""
    given = {sid: i % 3 for i, sid in enumerate(sids)}
    padded, packed = collator(sids, given), collator.packed(sids, given, rows_of=rows_of)
    assert packed["input_ids"].shape[0] < len(sids)
    with torch.no_grad():
        a, b = full_loss(loss, model, padded), full_loss(loss, model, packed)
    width = padded["labels"].shape[1]
    torch.testing.assert_close(unpack_targets(b.nll, packed, width), a.nll, rtol=0, atol=1e-5)
    torch.testing.assert_close(reduced(b), reduced(a), rtol=1e-5, atol=1e-6)


def test_packed_equals_padded(world):
    records, st, collator, store = world
    assert_packed_equals_padded(kd(store, divergence="jsd"), st.model, collator, [r.sample_id for r in records])


def test_teacher_rows_follow_the_sample_not_the_batch_position(world):
    records, st, collator, store = world
    sids = [r.sample_id for r in records]
    loss = kd(store)
    with torch.no_grad():
        fwd = full_loss(loss, st.model, collator(sids))
        rev = full_loss(loss, st.model, collator(sids[::-1]))
    for i, sid in enumerate(sids):
        j = len(sids) - 1 - i
        n = int(fwd.mask[i].sum())
        torch.testing.assert_close(rev.nll[j][rev.mask[j]][:n], fwd.nll[i][fwd.mask[i]], rtol=1e-5, atol=1e-6), sid


def test_a_student_distilled_from_itself_has_no_divergence(world, tmp_path):
    records, st, collator, _ = world
    with TopKStore(tmp_path, k=150, teacher="self", tokenizer="tiny-bpe-150") as s:  # every id: no tail
        rescore(st.model, st.tokenizer, records, TEMPLATE, s)
    with torch.no_grad():
        tl = full_loss(kd(str(tmp_path), alpha=1.0), st.model, collator([r.sample_id for r in records], {records[0].sample_id: 1}))
    assert tl.mask.sum() > 0
    assert tl.nll[tl.mask].abs().max().item() < 2e-3  # fp16 storage of the teacher's log-probs


def test_weighted_kd_with_uniform_token_weights_is_plain_kd(world):
    records, st, collator, store = world
    sids = [r.sample_id for r in records]
    ones = {r.sample_id: [(0, len(r.rationale), 1.0)] for r in records}
    weighted_batch = StageCollator(records, TEMPLATE, st.tokenizer, False, weights=ones)(sids)
    with torch.no_grad():
        a = full_loss(kd(store, weights="weighted"), st.model, weighted_batch)
        b = full_loss(kd(store, weights="uniform"), st.model, collator(sids))
    torch.testing.assert_close(reduced(a), reduced(b), rtol=1e-6, atol=1e-7)
    assert kd(store, weights="weighted").reads_token_weights() and not kd(store).reads_token_weights()


def test_a_store_of_another_tokenizer_is_an_error_naming_the_sample(world, tmp_path):
    records, st, collator, _ = world
    other = tiny_lm(records, TEMPLATE, 120, 1)
    with TopKStore(tmp_path, k=4, teacher="other", tokenizer="tiny-bpe-120") as s:
        rescore(other.model, other.tokenizer, records, TEMPLATE, s)
    with torch.no_grad(), pytest.raises(TopKStoreError, match=r"sample 'arith/train/\d+'.*another tokenizer.*tiny-bpe-120"):
        full_loss(kd(str(tmp_path)), st.model, collator([r.sample_id for r in records]))


def test_tail_buckets_need_temperature_one():
    with pytest.raises(ValueError, match="use buckets: renorm"):
        KdLoss.Params(teacher_store="x", temperature=2.0)
