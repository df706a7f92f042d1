"""Data sources: the built-in generator and the local JSON/JSONL loader (on the real shared data)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kpod.data.records import DataError
from kpod.data.sources import Arith, Local
from kpod.data.steps import split_steps

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED.exists(), reason="../shared/data not present")


def test_arith_splits_are_seeded_unique_and_ood_is_longer():
    p = Arith.Params(n_train=300, n_validation=30, n_test=30, n_ood=30, max_steps=4, ood_min_steps=5)
    a, b = Arith(p).load(), Arith(p).load()
    assert [r.question for r in a["train"]] == [r.question for r in b["train"]]
    other = Arith(p.model_copy(update={"seed": 7})).load()
    assert [r.question for r in other["train"]] != [r.question for r in a["train"]]
    questions = [r.question for recs in a.values() for r in recs]
    assert len(questions) == len(set(questions)) == 390
    assert max(r.n_steps for r in a["train"]) <= 4
    assert min(r.n_steps for r in a["ood"]) >= 5
    for r in a["train"][:50]:
        # keypoints are the calculations; filler spans never overlap them
        for s, e in r.meta["keypoint_spans"]:
            calc = r.rationale[s:e]
            assert "=" in calc and str(int(calc.split("=")[1])) == calc.split("=")[1].strip()
        for fs, fe in r.meta["filler_spans"]:
            assert all(fe <= s or fs >= e for s, e in r.meta["keypoint_spans"])
        # the answer is the result of the last calculation
        s, e = r.meta["keypoint_spans"][-1]
        assert r.rationale[s:e].split("=")[1].strip() == r.answer


def test_arith_calculations_are_correct():
    recs = Arith(Arith.Params(n_train=200, n_validation=0, n_test=0, n_ood=50)).load()
    ops = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "/": lambda a, b: a // b}
    for r in recs["train"] + recs["ood"]:
        for s, e in r.meta["keypoint_spans"]:
            lhs, rhs = r.rationale[s:e].split("=")
            a, op, b = lhs.split()
            assert ops[op](int(a), int(b)) == int(rhs)
            if op == "/":
                assert int(a) % int(b) == 0


@needs_shared
def test_local_json_with_field_mapping_on_svamp():
    params = Local.Params(
        files={"train": str(SHARED / "mcc_kd/SVAMP/train.json"), "validation": str(SHARED / "mcc_kd/SVAMP/dev.json")},
        fields={"question": "instruction", "rationale": "output", "answer": "label"},
        id_prefix="svamp",
    )
    splits = Local(params).load()
    assert len(splits["train"]) == 700 and len(splits["validation"]) == 150
    first = splits["train"][0]
    assert first.sample_id == "svamp/train/00000"
    raw = json.loads((SHARED / "mcc_kd/SVAMP/train.json").read_text())[0]
    assert first.rationale == split_steps(raw["output"][0])[0]
    assert first.n_steps >= 2 and first.answer == raw["label"]
    assert all(r.rationale == "" and r.n_steps == 0 for r in splits["validation"])


@needs_shared
def test_local_jsonl_on_gsm8k_keeps_every_row():
    params = Local.Params(files={"train": str(SHARED / "gsm8k/train.jsonl")}, fields={"rationale": None})
    recs = Local(params).load()["train"]
    assert len(recs) == 7473
    assert recs[41].sample_id == "train/train/00041"


def test_local_errors_name_file_and_line(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text('{"question": "q1", "answer": "1"}\n{"question": "q2"\n')
    with pytest.raises(DataError, match=r"d\.jsonl:2: invalid JSON"):
        Local(Local.Params(files={"train": str(f)})).load()
    f.write_text('{"question": "q1", "answer": "1"}\n{"question": "q2", "ans": "2"}\n')
    with pytest.raises(DataError, match=r"d\.jsonl:2: missing field 'answer'"):
        Local(Local.Params(files={"train": str(f)})).load()
    f.write_text('{"id": 1, "question": "q1", "answer": "1"}\n\n{"id": 1, "question": "q2", "answer": "2"}\n')
    with pytest.raises(DataError, match="duplicate sample_id '1'"):
        Local(Local.Params(files={"train": str(f)}, fields={"id": "id"})).load()
    j = tmp_path / "d.json"
    j.write_text('[{"question": "q", "answer": ""}]')
    with pytest.raises(DataError, match=r"d\.json:1 \(item 0\): field 'answer' must be a non-empty"):
        Local(Local.Params(files={"train": str(j)})).load()
    with pytest.raises(DataError, match="no such data file"):
        Local(Local.Params(files={"train": str(tmp_path / "missing.jsonl")})).load()
