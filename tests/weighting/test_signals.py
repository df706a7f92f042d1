"""The static strategies oracle and precomputed, and the top_k policy over static weights, on
built-in records and two tokenizers (the in-process BPE with one digit per token, and a WordPiece
tokenizer built here whose tokens hold whole numbers)."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest

from kpod.data.records import DataError, Record
from kpod.data.sources import Arith
from kpod.data.template import PromptTemplate
from kpod.data.tokenize import CharWeights, encode_causal_many, token_weights, train_tokenizer
from kpod.weighting.base import WeightingContext
from kpod.weighting.evaluate import keypoint_auc
from kpod.weighting.oracle import Oracle
from kpod.weighting.precomputed import Precomputed
from kpod.weighting.select import Selection, kept_ratio, select_static
from kpod.weighting.tokens import rationale_tokens_many

TEMPLATE = PromptTemplate()


@pytest.fixture(scope="module")
def records():
    return Arith(Arith.Params(n_train=30, n_validation=0, n_test=0, n_ood=0, max_steps=3)).load()["train"]


@pytest.fixture(scope="module")
def bpe(records):
    return train_tokenizer([TEMPLATE.serialize(r).text for r in records], vocab_size=200)


@pytest.fixture(scope="module")
def wordpiece(records):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tk.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=250, special_tokens=["[PAD]", "[UNK]", "[SEP]"], show_progress=False)
    tk.train_from_iterator([TEMPLATE.serialize(r).text for r in records], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="[PAD]", unk_token="[UNK]", eos_token="[SEP]")


def _token_weights(records, weights, tokenizer):
    """What the collator gives each rationale token: sample_id → (anchors, weights)."""
    sers = [TEMPLATE.serialize(r) for r in records]
    out = {}
    for r, ser, enc in zip(records, sers, encode_causal_many(tokenizer, sers)):
        spans = weights.get(r.sample_id)
        off = ser.rationale_start
        w = token_weights(enc.anchors, ser, CharWeights([(s + off, e + off, x) for s, e, x in spans] if spans else None))
        rat = (enc.anchors >= off) & (enc.anchors < ser.answer_span[0])
        out[r.sample_id] = (enc.anchors[rat] - off, w[rat])
    return out


# --- oracle ----------------------------------------------------------------------------------
def test_oracle_weighs_keypoints_one_and_filler_low_with_auc_one(records, bpe):
    weights = Oracle(Oracle.Params(filler_weight=0.2)).compute(WeightingContext(records=records, seed=0))
    for r in records:
        cw = CharWeights(weights[r.sample_id])
        for s, e in r.meta["keypoint_spans"]:
            assert all(cw(i) == 1.0 for i in range(s, e))
        for s, e in r.meta["filler_spans"]:
            assert all(cw(i) in (0.2, 1.0) for i in range(s, e))
        assert any(cw(i) == 0.2 for s, e in r.meta["filler_spans"] for i in range(s, e)) or not r.meta["filler_spans"]
    rep = keypoint_auc(records, weights, TEMPLATE, bpe)
    assert rep["auc"] == 1.0 and all(k["auc"] == 1.0 for k in rep["by_kind"].values())


def test_oracle_reads_side_data_by_sample_id_not_position(records):
    want = Oracle(Oracle.Params()).compute(WeightingContext(records=records, seed=0))
    shuffled = list(records)
    random.Random(3).shuffle(shuffled)
    assert [r.sample_id for r in shuffled] != [r.sample_id for r in records]
    got = Oracle(Oracle.Params()).compute(WeightingContext(records=shuffled, seed=0))
    assert got == want
    # a record whose side data moved to another id gets that id's weights, not its position's
    swapped = [Record(r.sample_id, r.question, r.rationale, r.steps, r.answer, meta=dict(records[1 - i].meta))
               for i, r in enumerate(records[:2])]
    moved = Oracle(Oracle.Params()).compute(WeightingContext(records=swapped, seed=0))
    assert moved[records[0].sample_id] == want[records[1].sample_id]


def test_oracle_without_side_data_is_a_clear_error(records):
    bare = [Record(r.sample_id, r.question, r.rationale, r.steps, r.answer) for r in records[:4]]
    with pytest.raises(DataError, match=r"weighting.name: oracle needs keypoint side data.*4 of 4.*arith/train/00000"):
        Oracle(Oracle.Params()).compute(WeightingContext(records=bare, seed=0))


# --- precomputed -----------------------------------------------------------------------------
def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return Precomputed(Precomputed.Params(path=str(path)))


def test_precomputed_spans_and_token_offsets_map_to_tokens_of_two_tokenizers(tmp_path, records, bpe, wordpiece):
    """Digits weigh 1, everything else 0.25 — once as character spans, once as whitespace tokens
    with offsets (a third tokenizer): both give every student token, under either tokenizer, the
    weight of its anchor character."""
    def level(c):
        return 1.0 if c.isdigit() else 0.25

    span_rows, token_rows = [], []
    for r in records:
        span_rows.append({"sample_id": r.sample_id, "spans": [[i, i + 1, level(c)] for i, c in enumerate(r.rationale)]})
        toks, at = [], 0
        for word in r.rationale.split():
            off = r.rationale.index(word, at)
            at = off + len(word)
            toks.append({"text": word, "offset": off, "weight": level(word[0])})
        token_rows.append({"sample_id": r.sample_id, "tokens": toks})
    by_spans = _write(tmp_path / "spans.jsonl", span_rows).compute(WeightingContext(records=records, seed=0))
    by_tokens = _write(tmp_path / "tokens.jsonl", token_rows).compute(WeightingContext(records=records, seed=0))
    for tok in (bpe, wordpiece):
        a, b = _token_weights(records, by_spans, tok), _token_weights(records, by_tokens, tok)
        n_digit = 0
        for r in records:
            anchors, w = a[r.sample_id]
            want = np.asarray([level(r.rationale[x]) for x in anchors], dtype=np.float32)
            np.testing.assert_array_equal(w, want)
            np.testing.assert_array_equal(b[r.sample_id][1], want)  # a word's weight is its first char's
            n_digit += int((want == 1.0).sum())
        assert n_digit > 0
    # the two tokenizers really cut differently (else this would test one tokenizer twice)
    assert _token_weights(records, by_spans, bpe)[records[0].sample_id][0].tolist() != \
        _token_weights(records, by_spans, wordpiece)[records[0].sample_id][0].tolist()


@pytest.mark.parametrize(("line", "msg"), [
    ("not json", r"p\.jsonl:2: not JSON"),
    ('{"sample_id": "arith/train/00001", "spans": [[0, 9999, 1]]}', r"p\.jsonl:2: span .* outside the rationale"),
    ('{"sample_id": "arith/train/00001", "spans": [[0, 2, -1]]}', r"p\.jsonl:2: .* weight must be"),
    ('{"sample_id": "arith/train/00001", "tokens": [{"text": "zz", "offset": 0, "weight": 1}]}', r"p\.jsonl:2: token 'zz'"),
    ('{"sample_id": "arith/train/00000", "spans": []}', r"p\.jsonl:2: sample_id 'arith/train/00000' repeats line 1"),
    ('{"sample_id": "arith/train/00001"}', r"p\.jsonl:2: give exactly one of"),
])
def test_precomputed_errors_name_file_and_line(tmp_path, records, line, msg):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"sample_id": records[0].sample_id, "spans": []}) + "\n" + line + "\n")
    with pytest.raises(DataError, match=msg):
        Precomputed(Precomputed.Params(path=str(path))).compute(WeightingContext(records=records[:2], seed=0))


def test_precomputed_counts_and_refuses_missing_ids_and_counts_lines_outside(tmp_path, records):
    rows = [{"sample_id": r.sample_id, "spans": []} for r in records[:3]] + [{"sample_id": "other/1", "spans": []}]
    strategy = _write(tmp_path / "p.jsonl", rows)
    with pytest.raises(DataError, match=r"p\.jsonl: 2 of 5 training records have no line \(first: arith/train/00003"):
        strategy.compute(WeightingContext(records=records[:5], seed=0))
    strategy.compute(WeightingContext(records=records[:3], seed=0))
    assert strategy.report["lines_outside_train"] == 1 and strategy.report["records"] == 3


# --- top_k over static weights ---------------------------------------------------------------
@pytest.mark.parametrize("k", [0.2, 0.5])
def test_static_top_k_keeps_exactly_ceil_k_n_highest_tokens_per_record(records, bpe, wordpiece, k):
    rng = random.Random(0)
    weights = {r.sample_id: [(i, i + 1, rng.random()) for i in range(len(r.rationale))] for r in records}
    for tok in (bpe, wordpiece):
        sel = select_static(weights, Selection(policy="top_k", k=k), records, TEMPLATE, tok)
        for r, toks in zip(records, rationale_tokens_many(records, TEMPLATE, tok)):
            anchors = np.unique([a for a, _ in toks.rat_spans])
            kept = CharWeights(sel[r.sample_id]).many(anchors, np.float64)
            score = CharWeights(weights[r.sample_id]).many(anchors, np.float64)
            assert set(kept.tolist()) <= {0.0, 1.0}
            assert int(kept.sum()) == math.ceil(k * len(anchors))
            assert score[kept == 1].min() >= score[kept == 0].max()
        assert kept_ratio(sel, records, TEMPLATE, tok) == pytest.approx(k, abs=0.1)
    assert select_static(weights, Selection(), records, TEMPLATE, bpe) is weights  # weight: unchanged


# --- the recipe's weighting.select -----------------------------------------------------------
def test_select_validates_and_a_dynamic_strategy_needs_a_loss_reading_token_weights():
    from kpod.recipe import RecipeError, load_recipe

    r = load_recipe("recipes/std_cot.yaml", ["weighting.name=dft", "loss.name=kpod", "weighting.select.policy=top_k",
                                             "weighting.select.k=0.2"])
    assert (r.weighting.select.policy, r.weighting.select.k) == ("top_k", 0.2)
    assert load_recipe("recipes/std_cot.yaml").weighting.select.policy == "weight"  # the default
    with pytest.raises(RecipeError, match=r"weighting.*select.*k"):
        load_recipe("recipes/std_cot.yaml", ["weighting.select.k=0"])
    with pytest.raises(RecipeError, match=r"weighting.name: 'entropy' is dynamic, but loss 'std_cot'"):
        load_recipe("recipes/std_cot.yaml", ["weighting.name=entropy"])
