"""kpod.data.tokenize + kpod.data.template: the in-process tokenizer, anchors, step→token spans.

Everything is checked for two tokenizers: the in-process BPE one (``train_tokenizer``) and a
WordPiece tokenizer built here from ``tokenizers`` (different pre-tokenisation, no BOS, no
whitespace inside tokens), so nothing relies on one tokenizer's quirks.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kpod.data.sources import Arith
from kpod.data.template import PromptTemplate
from kpod.data.tokenize import (
    CharWeights,
    anchors_from_offsets,
    encode_causal,
    encode_causal_many,
    encode_seq2seq,
    token_step_spans,
    train_tokenizer,
)


def squash(s: str) -> str:
    return re.sub(r"\s+", "", s)


@pytest.fixture(scope="module")
def records():
    splits = Arith(Arith.Params(seed=3, n_train=160, n_validation=0, n_test=0, n_ood=20, min_steps=1)).load()
    return splits["train"] + splits["ood"]


@pytest.fixture(scope="module")
def template():
    return PromptTemplate()


@pytest.fixture(scope="module")
def bpe(records, template):
    return train_tokenizer([template.serialize(r).text for r in records[:120]], vocab_size=300)


@pytest.fixture(scope="module")
def wordpiece(records, template):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tk.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(
        vocab_size=250, special_tokens=["[PAD]", "[UNK]", "[SEP]"], show_progress=False
    )
    tk.train_from_iterator([template.serialize(r).text for r in records], trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, pad_token="[PAD]", unk_token="[UNK]", eos_token="[SEP]"
    )


# --- the in-process tokenizer ----------------------------------------------------------------
def test_special_token_ids(bpe):
    assert (bpe.pad_token_id, bpe.unk_token_id, bpe.bos_token_id, bpe.eos_token_id) == (0, 1, 2, 3)


def test_no_vocabulary_entry_holds_two_digits(bpe):
    vocab = bpe.get_vocab()
    assert len(vocab) > 100
    for token in vocab:
        assert sum(ch.isdigit() for ch in token) <= 1, token
    for i in range(len(vocab)):
        assert sum(ch.isdigit() for ch in bpe.decode([i])) <= 1


def test_digits_are_single_tokens_and_decoding_is_exact(bpe, records, template):
    for r in records:
        text = template.serialize(r).text
        ids = bpe(text, add_special_tokens=False)["input_ids"]
        assert bpe.unk_token_id not in ids
        assert bpe.decode(ids) == text
        pieces = [bpe.decode([i]) for i in ids]
        assert sum(sum(c.isdigit() for c in p) for p in pieces) == sum(c.isdigit() for c in text)
        assert all(sum(c.isdigit() for c in p) <= 1 for p in pieces)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 10**12), m=st.integers(0, 999))
def test_property_numbers_split_into_digits(bpe, n, m):
    text = f"He has {n} shells and {m}.5 more, so {n} + {m} = {n + m}"
    enc = bpe(text, add_special_tokens=False, return_offsets_mapping=True)
    assert bpe.decode(enc["input_ids"]) == text
    digit_tokens = [(s, e) for s, e in enc["offset_mapping"] if any(c.isdigit() for c in text[s:e])]
    assert len(digit_tokens) == sum(c.isdigit() for c in text)


# --- anchors -------------------------------------------------------------------------------
def test_anchors_skip_leading_whitespace_and_attach_space_tokens_forward():
    text = "ab cd\tef"
    # tokens "ab", " ", "cd", "\t", "ef": each whitespace token takes the next token's anchor
    offsets = [(0, 2), (2, 3), (3, 5), (5, 6), (6, 8)]
    assert anchors_from_offsets(text, offsets).tolist() == [0, 3, 3, 6, 6]
    # a token that starts with a space is anchored at its first visible character
    assert anchors_from_offsets(text, [(0, 2), (2, 5), (5, 8)]).tolist() == [0, 3, 6]
    # shift makes anchors absolute
    assert anchors_from_offsets(text, [(2, 5), (5, 8)], shift=100).tolist() == [103, 106]


def test_real_space_only_token_shares_the_next_tokens_anchor(bpe, records, template):
    found = 0
    for r in records[:80]:
        text = template.serialize(r).text
        enc = bpe(text, add_special_tokens=False, return_offsets_mapping=True)
        anchors = anchors_from_offsets(text, enc["offset_mapping"])
        for i, (s, e) in enumerate(enc["offset_mapping"][:-1]):
            if text[s:e].isspace():
                found += 1
                assert anchors[i] == anchors[i + 1]
                assert not text[anchors[i]].isspace()
    assert found > 0  # the BPE vocabulary is small enough to leave bare "▁" tokens


def _anchors_reference(text, offsets, shift=0):
    """The definition, one token at a time (right to left), to check the vectorised version."""
    out, nxt = [0] * len(offsets), len(text)
    for i in range(len(offsets) - 1, -1, -1):
        s, e = offsets[i]
        a = s
        while a < e and text[a].isspace():
            a += 1
        if a < e:
            nxt = out[i] = a
        else:
            out[i] = nxt
    return [a + shift for a in out]


@settings(max_examples=300)
@given(st.text(alphabet=" \t\n\x1c\u00a0\u2003\u3000\u200bab1=.é", max_size=30), st.data(), st.integers(0, 50))
def test_anchors_match_the_definition_on_any_offsets(text, data, shift):
    # any offsets: gaps, overlaps, empty and whitespace-only tokens, tokens past visible text
    cuts = data.draw(st.lists(st.tuples(st.integers(0, len(text)), st.integers(0, len(text))), max_size=12))
    offsets = [(min(a, b), max(a, b)) for a, b in cuts]
    assert anchors_from_offsets(text, offsets, shift).tolist() == _anchors_reference(text, offsets, shift)


@settings(max_examples=200)
@given(st.lists(st.tuples(st.integers(0, 40), st.integers(1, 8), st.floats(0, 1, width=32)), max_size=6),
       st.lists(st.integers(-2, 60), max_size=30))
def test_char_weights_many_equals_one_at_a_time(spans, positions):
    spans = [(s, s + n, w) for s, n, w in spans]
    cw = CharWeights(spans)
    got = cw.many(np.asarray(positions, dtype=np.int64))
    want = np.asarray([cw(p) for p in positions], dtype=np.float32)
    assert got.dtype == np.float32 and got.tolist() == want.tolist()


def test_encode_causal_many_equals_one_at_a_time(bpe, wordpiece, records, template):
    sers = [template.serialize(r) for r in records[:40]]
    for tok in (bpe, wordpiece):
        batched = encode_causal_many(tok, sers, chunk=7)  # chunk boundaries inside the list
        assert len(batched) == len(sers)
        for one, many in zip([encode_causal(tok, s) for s in sers], batched):
            assert one.input_ids.tolist() == many.input_ids.tolist()
            assert one.anchors.tolist() == many.anchors.tolist()


def test_whitespace_run_attaches_to_the_next_visible_token():
    text = "x.  Then"
    offsets = [(0, 2), (2, 3), (3, 8)]  # "x.", " ", " Then" (what the in-process BPE emits)
    anchors = anchors_from_offsets(text, offsets)
    assert anchors[1] == anchors[2] == 4


def test_encode_causal_bos_and_eos(bpe, records, template):
    ser = template.serialize(records[0])
    enc = encode_causal(bpe, ser)
    assert enc.input_ids[0] == bpe.bos_token_id and enc.anchors[0] == -1
    assert enc.input_ids[-1] == bpe.eos_token_id and enc.anchors[-1] == len(ser.text)
    assert np.all(np.diff(enc.anchors) >= 0)  # anchors never go backwards
    assert bpe.decode(enc.input_ids[1:-1].tolist()) == ser.text
    with pytest.raises(ValueError, match="max_length"):
        encode_causal(bpe, ser, max_length=5)


def test_encode_causal_without_bos(wordpiece, records, template):
    ser = template.serialize(records[0])
    enc = encode_causal(wordpiece, ser)
    assert wordpiece.bos_token_id is None
    assert enc.anchors[0] == 0  # first real token, no BOS in front
    assert enc.input_ids[-1] == wordpiece.eos_token_id and enc.anchors[-1] == len(ser.text)


# --- steps → token spans (both tokenizers) --------------------------------------------------
@pytest.mark.parametrize("tok_name", ["bpe", "wordpiece"])
def test_token_step_spans_decode_to_step_text(request, tok_name, records, template):
    tok = request.getfixturevalue(tok_name)
    for r in records:
        ser = template.serialize(r)
        enc = encode_causal(tok, ser)
        spans = token_step_spans(enc.anchors, ser)
        assert len(spans) == len(ser.steps) == r.n_steps
        prev = -1
        for (a, b), (cs, ce), step_text in zip(spans, ser.steps, r.step_texts(), strict=True):
            assert prev < a <= b
            prev = b
            assert ser.text[cs:ce] == step_text
            decoded = tok.decode(enc.input_ids[a : b + 1].tolist())
            assert squash(decoded) == squash(step_text), (r.sample_id, decoded, step_text)
        # tokens between two steps carry no visible text
        for (_, b1), (a2, _) in zip(spans, spans[1:], strict=False):
            assert squash(tok.decode(enc.input_ids[b1 + 1 : a2].tolist())) == ""
        # the answer sentence follows the last step
        answer = tok.decode(enc.input_ids[spans[-1][1] + 1 : -1].tolist())
        assert squash(answer) == squash(template.render_answer(r.answer))


def test_token_step_spans_rejects_a_step_without_tokens(bpe, records, template):
    ser = template.serialize(records[0])
    enc = encode_causal(bpe, ser)
    with pytest.raises(ValueError, match="no tokens"):
        token_step_spans(enc.anchors[:3], ser)


# --- encoder-decoder encoding ---------------------------------------------------------------
@pytest.mark.parametrize("tok_name", ["bpe", "wordpiece"])
def test_encode_seq2seq_cut_at_each_step(request, tok_name, records, template):
    tok = request.getfixturevalue(tok_name)
    for r in records[:40]:
        ser = template.serialize(r)
        for c in range(r.n_steps + 1):
            cut = ser.cut(c)
            enc = encode_seq2seq(tok, ser, cut)
            assert enc.labels_ids is not None and enc.label_anchors is not None
            assert enc.labels_ids[-1] == tok.eos_token_id
            assert enc.input_ids[-1] == tok.eos_token_id
            assert enc.label_anchors[-1] == len(ser.text)
            assert np.all(enc.label_anchors >= cut)
            assert enc.label_anchors[0] == cut
            target = tok.decode(enc.labels_ids[:-1].tolist())
            source = tok.decode(enc.input_ids[:-1].tolist())
            if c < r.n_steps:
                s, e = ser.steps[c]
                assert cut == s
                assert squash(target).startswith(squash(ser.text[s:e]))
            else:
                assert cut == ser.answer_span[0]
                assert squash(target) == squash(template.render_answer(r.answer))
            assert squash(target) == squash(ser.text[cut:])
            assert squash(source) == squash(ser.text[:cut])
            if tok_name == "bpe":  # exact, whitespace included
                assert target == ser.text[cut:]
                assert source == ser.text[:cut].rstrip()


# --- the template --------------------------------------------------------------------------
def test_serialize_spans_and_cut(records, template):
    r = next(r for r in records if r.n_steps >= 3)
    ser = template.serialize(r)
    prefix = template.inference_prefix(r.question)
    assert ser.text.startswith(prefix) and ser.prefix_end == len(prefix)
    assert ser.text[ser.rationale_start :].startswith(r.rationale)
    assert [ser.text[s:e] for s, e in ser.steps] == r.step_texts()
    a, b = ser.answer_span
    assert ser.text[a:b] == f"Therefore, the answer is {r.answer}" and b == len(ser.text)
    assert ser.cut(0) == ser.steps[0][0]
    assert ser.cut(1) == ser.steps[1][0]
    assert ser.cut(r.n_steps) == ser.cut(r.n_steps + 3) == a
    with pytest.raises(ValueError):
        ser.cut(-1)


def test_serialize_without_rationale(records):
    t = PromptTemplate(trigger="", answer_sentence="The answer is {answer}", use_rationale=False)
    r = records[0]
    ser = t.serialize(r)
    assert ser.text == f"Q: {r.question} A: The answer is {r.answer}"
    assert ser.steps == ()
    assert ser.cut(0) == ser.answer_span[0]
