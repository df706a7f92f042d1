"""The keypoint-vs-filler ROC-AUC and its split by keypoint kind, on hand-made weights."""

from __future__ import annotations

import re

import pytest

from kpod.data.sources import Arith
from kpod.data.template import PromptTemplate
from kpod.data.tokenize import train_tokenizer
from kpod.reports.run_report import describe_keypoint_auc
from kpod.weighting.evaluate import keypoint_auc

TEMPLATE = PromptTemplate()


@pytest.fixture(scope="module")
def records():
    return Arith(Arith.Params(n_train=24, n_validation=0, n_test=0, n_ood=0, max_steps=3)).load()["train"]


@pytest.fixture(scope="module")
def tokenizer(records):
    return train_tokenizer([TEMPLATE.serialize(r).text for r in records], vocab_size=200)


def _weights_by_char(records, weight_of):
    """Character-span weights: ``weight_of(char)`` for every character of every rationale."""
    return {r.sample_id: [(i, i + 1, weight_of(c)) for i, c in enumerate(r.rationale)] for r in records}


def test_numbers_kept_and_operators_dropped_split_the_auc_by_kind(records, tokenizer):
    # digits high, everything else (operators, '=', filler words) low: numbers separate perfectly,
    # operators and '=' tie with filler
    weights = _weights_by_char(records, lambda c: 0.9 if c.isdigit() else 0.1)
    rep = keypoint_auc(records, weights, TEMPLATE, tokenizer)
    kinds = rep["by_kind"]
    assert set(kinds) == {"number", "operator", "equals"}
    assert kinds["number"]["auc"] == 1.0
    assert kinds["operator"]["auc"] == 0.5 and kinds["equals"]["auc"] == 0.5
    assert 0.5 < rep["auc"] < 1.0
    assert sum(k["n"] for k in kinds.values()) == rep["n_keypoint"]
    text = describe_keypoint_auc(rep)
    assert re.fullmatch(r"\d\.\d{3} \(number 1\.000, operator 0\.500, equals 0\.500\)", text)


def test_operators_above_filler_below_numbers(records, tokenizer):
    level = {**dict.fromkeys("+-*/", 0.6), "=": 0.3}
    weights = _weights_by_char(records, lambda c: 0.9 if c.isdigit() else level.get(c, 0.1))
    kinds = keypoint_auc(records, weights, TEMPLATE, tokenizer)["by_kind"]
    assert kinds["operator"]["auc"] == 1.0 and kinds["equals"]["auc"] == 1.0
    assert kinds["operator"]["mean"] == pytest.approx(0.6) and kinds["equals"]["mean"] == pytest.approx(0.3)


def test_uniform_weights_have_no_kinds(records, tokenizer):
    assert keypoint_auc(records, None, TEMPLATE, tokenizer) == {"auc": 0.5, "uniform": True, "proxy": False}


def test_frame_tokens_are_reported_apart_from_keypoints_and_filler(records, tokenizer):
    # weight 0.7 on every character outside both side-data classes, keypoints 1, filler 0.1: the
    # AUC cannot see the frame, its mean weight is reported beside it
    def spans(r):
        out = []
        for i in range(len(r.rationale)):
            key = any(s <= i < e for s, e in r.meta["keypoint_spans"])
            fill = any(s <= i < e for s, e in r.meta["filler_spans"])
            out.append((i, i + 1, 1.0 if key else 0.1 if fill else 0.7))
        return out

    rep = keypoint_auc(records, {r.sample_id: spans(r) for r in records}, TEMPLATE, tokenizer)
    assert rep["auc"] == 1.0 and rep["n_frame"] > 0
    assert rep["mean_frame"] == pytest.approx(0.7)
    assert rep["mean_keypoint"] == pytest.approx(1.0) and rep["mean_filler"] == pytest.approx(0.1)


def test_records_without_side_data_are_scored_against_the_numbers_and_operators_proxy(records, tokenizer):
    from dataclasses import replace

    from kpod.weighting.evaluate import proxy_spans

    text = "He had 100 - 68 = 32 wrappers, a well-known 2.5 * 4 = 10 and 3x4=12."
    keys, rest = proxy_spans(text)
    assert [text[s:e] for s, e in keys] == ["100 - 68 = 32", "2.5 * 4 = 10", "3x4=12"]
    assert "".join(text[s:e] for s, e in sorted(keys + rest)) == text  # the two classes cover the text
    bare = [replace(r, meta={}) for r in records]  # a benchmark's records: no keypoint side data
    level = {**dict.fromkeys("+-*/=", 0.6)}
    rep = keypoint_auc(bare, _weights_by_char(bare, lambda c: 0.9 if c.isdigit() else level.get(c, 0.1)), TEMPLATE,
                       tokenizer)
    assert rep["proxy"] is True and rep["by_kind"]["number"]["auc"] == 1.0
    assert rep["by_kind"]["operator"]["auc"] > 0.9 and rep["n_filler"] > rep["n_keypoint"]  # filler: every other token
    assert "proxy" in describe_keypoint_auc(rep)
    gold = keypoint_auc(records, _weights_by_char(records, lambda c: 0.9 if c.isdigit() else 0.1), TEMPLATE, tokenizer)
    assert gold["proxy"] is False and "proxy" not in describe_keypoint_auc(gold)
