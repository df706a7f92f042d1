"""kpod.losses (per_token_nll, 'kpod', 'std_cot') and kpod.data.collate.StageCollator.

The engine reduces a loss as Σ(w·ℓ)/Σw with Σw taken from ``target_weights``;
``reduce`` below does exactly that for one micro-batch.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from kpod.data.collate import StageCollator
from kpod.data.sources import Arith
from kpod.data.template import PromptTemplate
from kpod.data.tokenize import IGNORE_INDEX, encode_causal, encode_seq2seq, train_tokenizer
from kpod.losses import per_token_nll
from kpod.losses.token_ce import KpodLoss, StdCotLoss


def reduce(loss_fn, logits, batch, is_encoder_decoder):
    w, _, _ = loss_fn.target_weights(batch, is_encoder_decoder)
    tl = loss_fn(logits, batch, is_encoder_decoder)
    return (tl.nll * tl.weight).sum() / w.sum()


def reference_ce(logits, labels, is_encoder_decoder):
    if not is_encoder_decoder:
        logits, labels = logits[:, :-1], labels[:, 1:]
    return F.cross_entropy(
        logits.float().reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=IGNORE_INDEX
    )


@st.composite
def toy_batch(draw, min_t=2):
    """Random logits [B,T,V], labels with -100 holes (≥1 real target after the shift), etc."""
    b = draw(st.integers(1, 3))
    t = draw(st.integers(min_t, 7))
    v = draw(st.integers(2, 9))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, t, v, generator=g) * 3
    labels = torch.randint(0, v, (b, t), generator=g)
    holes = torch.rand(b, t, generator=g) < draw(st.floats(0.0, 0.7))
    labels[holes] = IGNORE_INDEX
    labels[0, -1] = draw(st.integers(0, v - 1))  # a real target in either alignment
    is_answer = (torch.rand(b, t, generator=g) < 0.3) & (labels != IGNORE_INDEX)
    weights = torch.rand(b, t, generator=g) * (labels != IGNORE_INDEX)
    return logits, {"labels": labels, "weights": weights, "is_answer": is_answer}


LOSSES = {
    "std_cot": StdCotLoss(),
    "kpod_uniform": KpodLoss(KpodLoss.Params(weights="uniform")),
    "kpod_weighted": KpodLoss(),
}


# --- per_token_nll ---------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(data=toy_batch(), ed=st.booleans())
def test_per_token_nll_matches_cross_entropy(data, ed):
    logits, batch = data
    labels = batch["labels"]
    nll, mask, sl = per_token_nll(logits, labels, ed)
    lb = labels[:, sl]
    assert nll.dtype == torch.float32
    assert nll.shape == lb.shape == mask.shape
    assert torch.equal(mask, lb != IGNORE_INDEX)
    assert torch.all(nll[~mask] == 0)
    lg = logits if ed else logits[:, :-1]
    ref = F.cross_entropy(
        lg.reshape(-1, lg.size(-1)), lb.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none"
    )
    torch.testing.assert_close(nll.reshape(-1), ref)


@settings(max_examples=40, deadline=None)
@given(data=toy_batch(min_t=3))
def test_causal_shift_and_seq2seq_agree_on_aligned_toy_case(data):
    # a causal model whose position t predicts label t+1 is the same computation as an
    # encoder-decoder whose position t predicts label t, once the first label is dropped
    logits, batch = data
    labels = batch["labels"]
    nll_c, mask_c, sl_c = per_token_nll(logits, labels, False)
    nll_s, mask_s, sl_s = per_token_nll(logits[:, :-1], labels[:, 1:], True)
    assert (sl_c, sl_s) == (slice(1, None), slice(0, None))
    assert torch.equal(mask_c, mask_s)
    torch.testing.assert_close(nll_c, nll_s)
    # and the shift is exactly one: without it the causal values differ
    nll_wrong, _, _ = per_token_nll(logits, labels, True)
    assert nll_wrong.shape[1] == nll_c.shape[1] + 1


def test_per_token_nll_is_fp32_for_bf16_logits():
    logits = torch.randn(2, 5, 11).to(torch.bfloat16)
    labels = torch.randint(0, 11, (2, 5))
    nll, _, _ = per_token_nll(logits, labels, False)
    assert nll.dtype == torch.float32
    ref = reference_ce(logits.float(), labels, False)
    torch.testing.assert_close(nll.sum() / nll.numel(), ref)


# --- reduction -------------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(
    data=toy_batch(),
    ed=st.booleans(),
    which=st.sampled_from(["std_cot", "kpod_uniform", "kpod_weighted"]),
)
def test_uniform_weights_reduce_to_mean_token_ce(data, ed, which):
    logits, batch = data
    batch = dict(batch, weights=torch.ones_like(batch["weights"]))
    got = reduce(LOSSES[which], logits, batch, ed)
    torch.testing.assert_close(got, reference_ce(logits, batch["labels"], ed))


@settings(max_examples=40, deadline=None)
@given(data=toy_batch(), ed=st.booleans())
def test_kpod_uniform_ignores_weights(data, ed):
    logits, batch = data
    loss = LOSSES["kpod_uniform"]
    other = dict(batch, weights=torch.rand_like(batch["weights"]) * 5)
    w1, m1, a1 = loss.target_weights(batch, ed)
    w2, _, _ = loss.target_weights(other, ed)
    assert torch.equal(w1, w2)
    assert torch.equal(w1, m1.float())
    torch.testing.assert_close(reduce(loss, logits, batch, ed), reduce(loss, logits, other, ed))
    torch.testing.assert_close(
        reduce(loss, logits, batch, ed), reference_ce(logits, batch["labels"], ed)
    )


@settings(max_examples=40, deadline=None)
@given(data=toy_batch(), ed=st.booleans())
def test_kpod_weighted_uses_weights_and_answer_weight_one(data, ed):
    logits, batch = data
    w, mask, is_answer = KpodLoss().target_weights(batch, ed)
    sl = slice(0, None) if ed else slice(1, None)
    raw = batch["weights"][:, sl]
    assert torch.all(w[is_answer] == 1.0)
    rat = mask & ~is_answer
    torch.testing.assert_close(w[rat], raw[rat])
    assert torch.all(w[~mask] == 0)
    w2, _, _ = KpodLoss(KpodLoss.Params(answer_weight=2.5)).target_weights(batch, ed)
    assert torch.all(w2[is_answer] == 2.5)
    torch.testing.assert_close(w2[rat], raw[rat])


@settings(max_examples=40, deadline=None)
@given(data=toy_batch(min_t=3), ed=st.booleans(), pick=st.integers(0, 10**6))
def test_zero_weight_token_gets_zero_gradient(data, ed, pick):
    logits, batch = data
    sl = slice(0, None) if ed else slice(1, None)
    labels = batch["labels"]
    real = (labels[:, sl] != IGNORE_INDEX).nonzero()
    bi, ti = real[pick % len(real)].tolist()
    weights = batch["weights"].clone().clamp_min(0.1)
    is_answer = batch["is_answer"].clone()
    weights[:, sl][bi, ti] = 0.0
    is_answer[:, sl][bi, ti] = False  # answer tokens always weigh 1
    batch = dict(batch, weights=weights, is_answer=is_answer)
    leaf = logits.clone().requires_grad_(True)
    loss = reduce(KpodLoss(), leaf, batch, ed)
    if not torch.isfinite(loss):  # every remaining weight was zero: nothing to check
        return
    loss.backward()
    grad = leaf.grad
    # shifted index ti is logits row ti in both cases (causal: logits[ti] predicts labels[ti + 1])
    assert torch.all(grad[bi, ti] == 0)
    # every other real target with positive weight does get a gradient
    w, mask, _ = KpodLoss().target_weights(batch, ed)
    for b2, t2 in (mask & (w > 0)).nonzero().tolist():
        assert grad[b2, t2].abs().sum() > 0
    # positions that predict nothing (label -100) get no gradient either
    for b2, t2 in (~mask).nonzero().tolist():
        assert torch.all(grad[b2, t2] == 0)
    if not ed:
        assert torch.all(grad[:, -1] == 0)  # the last causal position predicts nothing


# --- the collator on real records ------------------------------------------------------------
@pytest.fixture(scope="module")
def records():
    return Arith(Arith.Params(seed=11, n_train=120, n_validation=0, n_test=0, n_ood=0)).load()["train"]


@pytest.fixture(scope="module")
def template():
    return PromptTemplate()


@pytest.fixture(scope="module")
def tok(records, template):
    return train_tokenizer([template.serialize(r).text for r in records], vocab_size=300)


def test_collator_masks_prompt_padding_and_given_steps(records, template, tok):
    recs = records[:6]
    col = StageCollator(recs, template, tok, is_encoder_decoder=False)
    sids = [r.sample_id for r in recs]
    batch = col(sids, {sid: 1 for sid in sids})
    assert batch["sample_ids"] == sids
    lengths = []
    for i, sid in enumerate(sids):
        ser = col.ser[sid]
        enc = encode_causal(tok, ser)
        n = len(enc.input_ids)
        lengths.append(n)
        labels, weights = batch["labels"][i], batch["weights"][i]
        assert torch.equal(batch["input_ids"][i, :n], torch.from_numpy(enc.input_ids))
        assert batch["attention_mask"][i, :n].all() and not batch["attention_mask"][i, n:].any()
        assert torch.all(batch["input_ids"][i, n:] == tok.pad_token_id)
        target = (labels != IGNORE_INDEX).nonzero().flatten()
        j = int(target[0])
        # the first target token is the first token of step 2
        assert enc.anchors[j] == ser.steps[1][0]
        first = tok.decode(enc.input_ids[j : j + 1].tolist()).strip()
        assert first and ser.text[ser.steps[1][0] : ser.steps[1][1]].startswith(first)
        # prompt, question, trigger and step 1: label -100, weight 0
        assert torch.all(labels[:j] == IGNORE_INDEX) and torch.all(weights[:j] == 0)
        assert np.all(enc.anchors[:j] < ser.steps[1][0])
        # everything from the cut to EOS is a target with its own id
        assert torch.equal(labels[j:n], batch["input_ids"][i, j:n])
        assert torch.all(weights[j:n] > 0)
        # padding
        assert torch.all(labels[n:] == IGNORE_INDEX) and torch.all(weights[n:] == 0)
        assert not batch["is_answer"][i, n:].any()
    assert len(set(lengths)) > 1  # the batch really is padded


def test_collator_seq2seq_target_starts_at_given_cut(records, template, tok):
    recs = records[:5]
    col = StageCollator(recs, template, tok, is_encoder_decoder=True)
    sids = [r.sample_id for r in recs]
    batch = col(sids, {sid: 1 for sid in sids})
    for i, sid in enumerate(sids):
        ser = col.ser[sid]
        labels = batch["labels"][i]
        real = labels[labels != IGNORE_INDEX]
        assert real[-1] == tok.eos_token_id
        assert tok.decode(real[:-1].tolist()) == ser.text[ser.steps[1][0] :]
        src = batch["input_ids"][i][batch["attention_mask"][i].bool()]
        assert tok.decode(src[:-1].tolist()) == ser.text[: ser.steps[1][0]].rstrip()
        m = len(real)
        assert torch.all(labels[m:] == IGNORE_INDEX) and torch.all(batch["weights"][i, m:] == 0)


@pytest.mark.parametrize("ed", [False, True])
def test_collated_batch_uniform_loss_is_mean_ce(records, template, tok, ed):
    recs = records[:4]
    col = StageCollator(recs, template, tok, is_encoder_decoder=ed)
    sids = [r.sample_id for r in recs]
    batch = col(sids, {sids[0]: 0, sids[1]: 1, sids[2]: 2, sids[3]: 9})
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(*batch["labels"].shape, len(tok), generator=g)
    for loss in (StdCotLoss(), KpodLoss(KpodLoss.Params(weights="uniform")), KpodLoss()):
        # no weighting given: char weights default to 1, so all three are the plain mean CE
        torch.testing.assert_close(
            reduce(loss, logits, batch, ed), reference_ce(logits, batch["labels"], ed)
        )


@pytest.mark.parametrize("ed", [False, True])
def test_answer_tokens_weigh_one_even_with_low_char_weights(records, template, tok, ed):
    recs = records[:4]
    weights = {r.sample_id: [(0, len(r.rationale), 0.2)] for r in recs}
    col = StageCollator(recs, template, tok, is_encoder_decoder=ed, weights=weights)
    sids = [r.sample_id for r in recs]
    batch = col(sids)
    eos_seen = 0
    for i, sid in enumerate(sids):
        ser = col.ser[sid]
        labels, w, ans = batch["labels"][i], batch["weights"][i], batch["is_answer"][i]
        real = labels != IGNORE_INDEX
        assert ans.any()
        assert torch.all(w[ans] == 1.0)
        assert torch.allclose(w[real & ~ans], torch.tensor(0.2))
        last = int(real.nonzero().max())
        assert labels[last] == tok.eos_token_id and ans[last] and w[last] == 1.0
        eos_seen += 1
        # the answer tokens spell the template's answer sentence
        ids = labels[ans][:-1].tolist()
        assert tok.decode(ids).strip() == template.render_answer(recs[i].answer)
        assert ser.answer_span[1] == len(ser.text)
    assert eos_seen == len(sids)
    # and the kpod loss keeps them at 1 too
    lw, mask, is_answer = KpodLoss().target_weights(batch, ed)
    assert is_answer.any() and torch.all(lw[is_answer] == 1.0)
    assert torch.allclose(lw[mask & ~is_answer], torch.tensor(0.2))


def _expected_weight(ser, anchor, step_w, given):
    """Weight a token with this anchor must carry at `given` steps (by its anchor, whatever the cut)."""
    if anchor < ser.cut(given):
        return 0.0
    if anchor >= ser.answer_span[0]:
        return 1.0
    for (s, e), w in zip(ser.steps, step_w, strict=True):
        if s <= anchor < e:
            return w
    return 1.0


@settings(max_examples=25, deadline=None)
@given(
    idx=st.integers(0, 119),
    step_w=st.lists(st.floats(0.05, 0.95), min_size=4, max_size=4),
    ed=st.booleans(),
)
def test_char_span_weights_map_to_tokens_and_never_shift(records, template, tok, idx, step_w, ed):
    r = records[idx]
    step_w = step_w[: r.n_steps]
    spans = [(s, e, w) for (s, e), w in zip(r.steps, step_w, strict=True)]
    col = StageCollator([r], template, tok, is_encoder_decoder=ed, weights={r.sample_id: spans})
    ser = col.ser[r.sample_id]
    per_cut = []
    for c in range(r.n_steps + 1):
        ex = col.example(r.sample_id, c)
        if ed:
            anchors = encode_seq2seq(tok, ser, ser.cut(c)).label_anchors
        else:
            anchors = encode_causal(tok, ser).anchors
        assert len(anchors) == len(ex["weights"])
        by_anchor = {}
        for a, w, lab in zip(
            anchors.tolist(), ex["weights"].tolist(), ex["labels"].tolist(), strict=True
        ):
            assert w == pytest.approx(_expected_weight(ser, a, step_w, c), abs=1e-6)
            assert (lab == IGNORE_INDEX) == (a < ser.cut(c))
            if lab != IGNORE_INDEX:
                by_anchor[a] = w
        per_cut.append(by_anchor)
    # a token keeps its weight whatever the cut: compare every stage against c = 0
    for by_anchor in per_cut[1:]:
        for a, w in by_anchor.items():
            assert a in per_cut[0] and per_cut[0][a] == pytest.approx(w)


def test_step_weights_03_07_by_anchor_at_c0_and_c1(records, template, tok):
    r = next(r for r in records if r.n_steps >= 3)
    (s1, e1), (s2, e2) = r.steps[0], r.steps[1]
    col = StageCollator(
        [r], template, tok, False, weights={r.sample_id: [(s1, e1, 0.3), (s2, e2, 0.7)]}
    )
    ser = col.ser[r.sample_id]
    anchors = encode_causal(tok, ser).anchors
    step1 = (anchors >= ser.steps[0][0]) & (anchors < ser.steps[0][1])
    step2 = (anchors >= ser.steps[1][0]) & (anchors < ser.steps[1][1])
    step3 = (anchors >= ser.steps[2][0]) & (anchors < ser.steps[2][1])
    w0 = col.example(r.sample_id, 0)["weights"]
    w1 = col.example(r.sample_id, 1)["weights"]
    assert step1.any() and step2.any() and step3.any()
    assert (
        np.allclose(w0[step1], 0.3) and np.allclose(w0[step2], 0.7) and np.allclose(w0[step3], 1.0)
    )
    assert np.all(w1[step1] == 0.0)  # given as input at c = 1
    assert np.allclose(w1[step2], 0.7) and np.allclose(w1[step3], 1.0)  # not shifted to 0.3
    assert np.all(w0[anchors < ser.steps[0][0]] == 0.0)  # prompt


def test_token_weights_contract(records, template, tok):
    # default 0.2 everywhere (no span covers the answer): answer tokens must still get 1, the
    # prompt 0 and the rationale the char weight, independently of any stage cut
    from kpod.data.tokenize import CharWeights, token_weights

    r = records[0]
    ser = template.serialize(r)
    anchors = encode_causal(tok, ser).anchors
    w = token_weights(anchors, ser, CharWeights(None, default=0.2))
    prompt = anchors < ser.rationale_start
    answer = anchors >= ser.answer_span[0]
    assert prompt.any() and answer.any() and (~prompt & ~answer).any()
    assert np.all(w[prompt] == 0.0)
    assert np.all(w[answer] == 1.0) and w[-1] == 1.0  # EOS included
    assert np.allclose(w[~prompt & ~answer], 0.2)


def test_collator_requires_weights_for_every_sample(records, template, tok):
    recs = records[:2]
    with pytest.raises(KeyError, match=recs[1].sample_id):
        StageCollator(recs, template, tok, False, weights={recs[0].sample_id: []})


def test_ignored_positions_cannot_poison_the_loss():
    logits = torch.randn(1, 4, 5)
    logits[0, 0, 0] = float("-inf")  # position 0 predicts labels[1], which is ignored
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 2, 3]])
    nll, mask, _ = per_token_nll(logits, labels, False)
    assert torch.isfinite(nll).all()
    assert nll[0, 0] == 0
