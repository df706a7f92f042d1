"""Several rationales per question: the ``mcc_kd`` and ``scotd`` data formats and ``arith``'s
``rationales_per_question`` (kpod/data/rationale_sets.py, kpod/data/arith_rationales.py)."""

from __future__ import annotations

from collections import Counter

from kpod.data.collate import answer_value_span
from kpod.data.rationale_sets import MccKdFormat, ScotdFormat
from kpod.data.records import Record
from kpod.data.sources import Arith
from kpod.data.template import PromptTemplate

TEXTS = ["add 2 and 3 to get 5", "add 2 and 3 to get five 5", "two plus three equals 5", "add 2 and 3 giving 5",
         "so the total is 6"]


def _question(qid: str = "q/1") -> list[Record]:
    return [Record(f"{qid}#{i}", "What is 2+3?", t, ((0, len(t)),), "5", {"where": f"f:{i}"}, qid)
            for i, t in enumerate(TEXTS)]


def test_mcc_kd_keeps_the_k_correct_rationales_with_the_lowest_overlap():
    fmt = MccKdFormat(MccKdFormat.Params(k=2))
    test = [Record("t/1", "What is 1+1?", "", (), "2", {})]
    out = fmt.expand({"train": _question(), "test": test}, seed=0)
    # the wrong rationale (answer 6) goes first; of the rest, texts 0 and 2 share no word bigram
    assert [r.sample_id for r in out["train"]] == ["q/1#r0", "q/1#r2"]
    assert {r.question_id for r in out["train"]} == {"q/1"} and all(r.answer == "5" for r in out["train"])
    assert out["test"] == test  # evaluation splits are not expanded
    assert fmt.report["train"] == {"questions": 1, "rationales_in": 5, "kept": 2, "dropped": 3, "questions_dropped": 0}
    three = MccKdFormat(MccKdFormat.Params(k=3)).expand({"train": _question()}, seed=0)["train"]
    assert [r.sample_id for r in three] == ["q/1#r0", "q/1#r2", "q/1#r3"]


def test_scotd_keeps_all_n_rationales_or_only_the_correct_ones():
    out = ScotdFormat().expand({"train": _question() + _question("q/2")}, seed=0)["train"]
    assert len(out) == 10 and Counter(r.question_id for r in out) == {"q/1": 5, "q/2": 5}
    assert [r.sample_id for r in out[:5]] == [f"q/1#r{i}" for i in range(5)]
    assert out[4].meta["teacher_answer"] == "6" and out[4].answer == "5"  # wrong one kept, gold target
    fmt = ScotdFormat(ScotdFormat.Params(correct_only=True))
    kept = fmt.expand({"train": _question()}, seed=0)["train"]
    assert len(kept) == 4 and fmt.report["train"]["dropped"] == 1


def _arith(**params):
    return Arith(Arith.Params(n_train=20, n_validation=4, n_test=4, n_ood=2, **params)).load()


def test_arith_rationales_per_question_are_distinct_and_share_the_question_id():
    one, four = _arith(), _arith(rationales_per_question=4, wrong_rationale_rate=0.5)
    assert all(r.question_id == r.sample_id for r in one["train"])  # default: one record per question
    assert {s: four[s] for s in ("validation", "test", "ood")} == {s: one[s] for s in ("validation", "test", "ood")}
    assert len(four["train"]) == 80
    groups: dict[str, list[Record]] = {}
    for r in four["train"]:
        groups.setdefault(r.question_id, []).append(r)
    assert sorted(groups) == [r.sample_id for r in one["train"]]
    for orig in one["train"]:
        group = groups[orig.sample_id]
        assert [r.sample_id for r in group] == [f"{orig.sample_id}#{i}" for i in range(4)]
        assert group[0].rationale == orig.rationale and {r.question for r in group} == {orig.question}
        assert len({r.rationale for r in group}) == 4  # genuinely different texts
        for r in group:  # calculation spans still mark calculations; steps cover the text
            assert all(" = " in r.rationale[s:e] for s, e in r.meta["keypoint_spans"])
            assert len(r.steps) == len(orig.steps)
    wrong = [r for r in four["train"] if r.meta["teacher_answer"] != r.answer]
    assert 0 < len(wrong) < 60 and all(not r.sample_id.endswith("#0") for r in wrong)
    assert _arith(rationales_per_question=4, wrong_rationale_rate=0.5) == four  # deterministic


def test_answer_value_span_marks_the_answer_inside_the_answer_sentence():
    ser = PromptTemplate().serialize(Record("a", "5 plus 5?", "5 + 5 = 10.", ((0, 11),), "10", {}))
    s, e = answer_value_span(ser, "10")
    assert ser.text[s:e] == "10" and s >= ser.answer_span[0]
