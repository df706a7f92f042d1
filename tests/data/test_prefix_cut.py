"""ICL's token-level cut in the collator (kpod/data/collate.py ``prefix_ratio``), on real
tokenizers: the in-process BPE and a WordPiece one.

Causal students: the target of a stage is exactly the trailing ``n - ⌊n·p⌋`` of the ``n`` target
tokens, or one more where token ``⌊n·p⌋ - 1`` is whitespace-only (it shares the next token's
anchor: the cut is a character) — tolerance one token, more given never. Weights stay those of
the character spans. Encoder–decoder students: the given text moves into the encoder and the
rest is re-tokenised, so the target count may differ from ``n - ⌊n·p⌋`` by one token."""

from __future__ import annotations

import numpy as np
import pytest

from kpod.data.collate import StageCollator
from kpod.data.prefix_ratio import prefix_tokens
from kpod.data.sources import Arith
from kpod.data.template import PromptTemplate
from kpod.data.tokenize import IGNORE_INDEX, train_tokenizer

TEMPLATE = PromptTemplate()


@pytest.fixture(scope="module")
def records():
    return Arith(Arith.Params(seed=5, n_train=40, n_validation=0, n_test=0, n_ood=0, min_steps=2)).load()["train"]


@pytest.fixture(scope="module")
def tokenizers(records):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [TEMPLATE.serialize(r).text for r in records]
    tk = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tk.decoder = decoders.WordPiece()
    tk.train_from_iterator(texts, trainers.WordPieceTrainer(
        vocab_size=250, special_tokens=["[PAD]", "[UNK]", "[SEP]"], show_progress=False))
    wp = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="[PAD]", unk_token="[UNK]", eos_token="[SEP]")
    return {"bpe": train_tokenizer(texts, vocab_size=300), "wordpiece": wp}


def weights_for(records):
    # uneven weights on every step, so a shifted weight would show
    return {r.sample_id: [(s, e, 0.1 + 0.8 * (k % 2)) for k, (s, e) in enumerate(r.steps)] for r in records}


@pytest.mark.parametrize("tok", ["bpe", "wordpiece"])
@pytest.mark.parametrize("ratio", [0.0, 0.3, 0.6, 0.9])
def test_causal_target_is_the_trailing_share_of_the_target_tokens(records, tokenizers, tok, ratio):
    col = StageCollator(records, TEMPLATE, tokenizers[tok], is_encoder_decoder=False, weights=weights_for(records))
    exact = 0
    for r in records:
        full = col.example(r.sample_id, 0)
        target0 = np.flatnonzero(full["labels"] != IGNORE_INDEX)
        n, k = len(target0), prefix_tokens(len(target0), ratio)
        ex = col.example(r.sample_id, 0, ratio)
        target = np.flatnonzero(ex["labels"] != IGNORE_INDEX)
        # a suffix of the full target, ending with it (EOS included)
        assert len(target) and target[-1] == target0[-1]
        assert np.array_equal(target, np.arange(target[0], target0[-1] + 1))
        assert n - k <= len(target) <= n - k + 1, (r.sample_id, n, k, len(target))
        exact += len(target) == n - k
        # the same tokens as the full target, with the same weights (character spans)
        assert np.array_equal(ex["labels"][target], full["labels"][target])
        assert np.array_equal(ex["weights"][target], full["weights"][target])
        assert not ex["weights"][ex["labels"] == IGNORE_INDEX].any()
        assert np.array_equal(ex["input_ids"], full["input_ids"])  # causal: only the mask moves
    assert exact >= 0.8 * len(records)  # the one-token tolerance is the exception


@pytest.mark.parametrize("ratio", [0.3, 0.6])
def test_prefix_ratio_applies_to_the_target_left_by_c(records, tokenizers, ratio):
    col = StageCollator(records, TEMPLATE, tokenizers["bpe"], is_encoder_decoder=False)
    for r in records:
        c = 1
        n = int((col.example(r.sample_id, c)["labels"] != IGNORE_INDEX).sum())
        got = int((col.example(r.sample_id, c, ratio)["labels"] != IGNORE_INDEX).sum())
        k = prefix_tokens(n, ratio)
        assert n - k <= got <= n - k + 1
        assert col.stage_cut(r.sample_id, c, ratio) >= col.stage_cut(r.sample_id, c)


@pytest.mark.parametrize("ratio", [0.3, 0.6])
def test_seq2seq_moves_the_given_prefix_into_the_encoder(records, tokenizers, ratio):
    tk = tokenizers["bpe"]
    col = StageCollator(records, TEMPLATE, tk, is_encoder_decoder=True, weights=weights_for(records))
    for r in records:
        ser = col.ser[r.sample_id]
        n = int((col.example(r.sample_id, 0)["labels"] != IGNORE_INDEX).sum())
        cut = col.stage_cut(r.sample_id, 0, ratio)
        assert ser.cut(0) < cut < len(ser.text)
        ex = col.example(r.sample_id, 0, ratio)
        got = int((ex["labels"] != IGNORE_INDEX).sum())
        assert abs(got - (n - prefix_tokens(n, ratio))) <= 1
        anchors = col.target_anchors(r.sample_id, 0, ratio)
        assert len(anchors) == len(ex["labels"]) and anchors.min() >= cut
        assert tk.decode(ex["input_ids"], skip_special_tokens=True).replace(" ", "").endswith(
            ser.text[:cut].replace(" ", "").rstrip())
