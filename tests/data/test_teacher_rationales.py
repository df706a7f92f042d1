"""``arith``'s ``teacher_rationales``: a ``kpod teach`` output replaces the training rationales by
sample_id (not by row order), the closing answer sentence is cut, questions without a kept
rationale are dropped and counted, and a row of another data set is an error naming file and row."""

from __future__ import annotations

import json

import pytest

from kpod.data.records import DataError
from kpod.data.sources import Arith

PARAMS = {"n_train": 5, "n_validation": 2, "n_test": 2, "n_ood": 0, "max_steps": 3}


def gold():
    return Arith(Arith.Params(**PARAMS)).load()


def teach_row(r, outputs):
    return {"id": r.sample_id, "instruction": r.question, "output": outputs, "label": r.answer}


def test_teacher_rationales_replace_the_gold_ones_by_sample_id(tmp_path):
    train = gold()["train"]
    rows = [  # written in another order than the generator's
        teach_row(train[3], ["First, 1 + 2 = 3 apples. Then 3 + 4 = 7 apples. Therefore, the answer is 7"]),
        teach_row(train[0], ["One way. Therefore, the answer is 5", "Another way: 2 + 3 = 5. Therefore, the answer is 5 "]),
        teach_row(train[1], []),  # the teacher kept nothing for this question
    ]
    path = tmp_path / "train.json"
    path.write_text(json.dumps(rows))
    src = Arith(Arith.Params(**PARAMS, teacher_rationales=str(path)))
    splits = src.load()
    recs = {r.sample_id: r for r in splits["train"]}
    t0 = train[0].sample_id
    assert set(recs) == {train[3].sample_id, f"{t0}#0", f"{t0}#1"}
    three = recs[train[3].sample_id]
    assert three.rationale == "First, 1 + 2 = 3 apples. Then 3 + 4 = 7 apples."
    assert len(three.steps) == 2 and three.question == train[3].question and three.answer == train[3].answer
    assert recs[f"{t0}#1"].rationale == "Another way: 2 + 3 = 5." and recs[f"{t0}#1"].question_id == t0
    assert "keypoint_spans" not in three.meta  # the generator's side data describes its own text
    assert splits["test"] == gold()["test"]  # evaluation splits stay the generator's
    assert src.report["teacher_rationales"] == {"file": str(path), "questions": 5, "rows": 3, "rationales": 3,
                                                "questions_without_rationale": 3}


def test_a_row_of_another_data_set_is_an_error_naming_the_row(tmp_path):
    train = gold()["train"]
    path = tmp_path / "train.jsonl"
    other = dict(teach_row(train[2], ["x"]), instruction="Q: something else")
    path.write_text(json.dumps(teach_row(train[0], ["x"])) + "\n" + json.dumps(other) + "\n")
    with pytest.raises(DataError, match=r"train.jsonl:2: data.source.params.teacher_rationales: .*differs"):
        Arith(Arith.Params(**PARAMS, teacher_rationales=str(path))).load()
    path.write_text(json.dumps(dict(teach_row(train[0], ["x"]), id="gsm8k/train/00001")) + "\n")
    with pytest.raises(DataError, match=r"train.jsonl:1: .*'gsm8k/train/00001' is not a training question"):
        Arith(Arith.Params(**PARAMS, teacher_rationales=str(path))).load()


def test_teacher_rationales_need_one_rationale_per_generated_question():
    with pytest.raises(ValueError, match="set rationales_per_question: 1"):
        Arith.Params(**PARAMS, teacher_rationales="t.json", rationales_per_question=2)
