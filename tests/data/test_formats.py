"""Baseline training-set expansions on hand-made records (kpod.data.formats)."""

import pytest

from kpod.data.formats import (
    SKD_FORMATS,
    Sample,
    answer_edited_rationale,
    counterfactual_record,
    dsbs_tasks,
    jaccard,
    keep_all_samples,
    mcc_kd_records,
    ngrams,
    perturb_answer,
    question_id,
    select_diverse,
    specialized_kd_formats,
    with_prefix,
)
from kpod.data.records import Record, check_unique_ids


def rec(sid: str, q: str = "What is 2+3?", rationale: str = "2 plus 3 is 5. So we get 5.", answer: str = "5"):
    steps = ((0, 14), (15, len(rationale))) if rationale else ()
    return Record(sid, q, rationale, steps, answer, {})


def test_dsbs_two_tasks_with_their_prefixes_and_shares():
    label, rat = dsbs_tasks(rec("arith/train/00001"), alpha=0.4)
    assert (label.sample_id, rat.sample_id) == ("arith/train/00001#label", "arith/train/00001#rationale")
    assert label.question.startswith("predict: ") and rat.question.startswith("explain: ")
    assert label.rationale == "" and label.steps == () and label.answer == "5"
    assert rat.rationale == "2 plus 3 is 5. So we get 5." and rat.steps == ((0, 14), (15, 27))
    assert (label.meta["task_share"], rat.meta["task_share"]) == (0.4, pytest.approx(0.6))
    assert rat.meta["answer_weight"] == 0.0 and "answer_weight" not in label.meta
    assert question_id(label) == question_id(rat) == "arith/train/00001"
    assert with_prefix(rec("t/1"), "predict: ").sample_id == "t/1"  # eval records keep their ids


def test_specialized_kd_four_formats_stable_ids_and_ratio():
    records = [rec("q1#r0"), rec("q1#r1", rationale="Add 2 and 3 to get 5."), rec("q2", q="What is 1+1?", answer="2")]
    records = [Record(r.sample_id, r.question, r.rationale, r.steps, r.answer, {},
                      r.sample_id.split("#")[0]) for r in records]
    out = specialized_kd_formats(records, seed=1, n_demos=4)
    check_unique_ids(out, "skd")
    by_fmt = {f: [r for r in out if r.meta["format"] == f] for f in SKD_FORMATS}
    assert len(by_fmt["zero_shot_cot"]) == 3 and len(by_fmt["in_context_cot"]) == 3  # every rationale
    assert len(by_fmt["zero_shot_answer_only"]) == 2  # one per question
    ic = [r for r in by_fmt["in_context_cot"] if r.sample_id == "q2#in_context_cot"][0]
    assert ic.question.startswith("Q: What is 2+3?\nA: ") and ic.question.endswith("What is 1+1?")
    assert ic.question.count("Q: ") == 1  # only the other question is a demo
    zao = by_fmt["zero_shot_answer_only"][0]
    assert zao.rationale == "" and zao.meta["trigger"] == ""
    assert specialized_kd_formats(records, seed=1) == out  # deterministic
    half = specialized_kd_formats(records, ratio={"zero_shot_cot": 1.0}, seed=1)
    assert {r.meta["format"] for r in half} == {"zero_shot_cot"}
    with pytest.raises(ValueError, match="ratio"):
        specialized_kd_formats(records, ratio={"few_shot": 1.0})


def test_ngram_jaccard_and_diversity_selection():
    assert jaccard(ngrams("a b c", 2), ngrams("a b c", 2)) == 1.0
    assert jaccard(ngrams("a b c", 2), ngrams("x y z", 2)) == 0.0
    texts = ["add 2 and 3 to get 5", "add 2 and 3 to get five", "two plus three equals five", "add 2 and 3 giving 5"]
    # bigram Jaccard: J(0,2) = J(1,2) = 0 (tie broken by index), J(0,3) = 3/8 < J(0,1) = 5/7
    assert select_diverse(texts, k=2) == [0, 2]
    assert select_diverse(texts, k=3) == [0, 2, 3]
    assert select_diverse(texts[:2], k=3) == [0, 1]


def test_mcc_kd_keeps_correct_diverse_rationales_of_one_question():
    samples = [Sample("add 2 and 3 to get 5", (), "5"), Sample("add 2 and 3 to get 5 again", (), "5"),
               Sample("two plus three equals five", (), "5"), Sample("wrong path gives 6", (), "6")]
    out, dropped = mcc_kd_records(rec("q7"), samples, k=2, is_correct=lambda a, g: a == g)
    assert dropped == 2
    assert [r.sample_id for r in out] == ["q7#r0", "q7#r2"]
    assert {question_id(r) for r in out} == {"q7"} and all(r.answer == "5" for r in out)


def test_scotd_keeps_every_sample_with_stable_ids():
    samples = [Sample(f"path {i}", ((0, 6),), "5" if i % 2 else "4") for i in range(5)]
    out, dropped = keep_all_samples(rec("q3"), samples)
    assert dropped == 0 and [r.sample_id for r in out] == [f"q3#r{i}" for i in range(5)]
    assert out[2].meta["teacher_answer"] == "4" and out[2].answer == "5"
    kept, dropped = keep_all_samples(rec("q3"), samples, is_correct=lambda a, g: a == g)
    assert dropped == 3 and [r.sample_id for r in kept] == ["q3#r1", "q3#r3"]


def test_scott_perturbed_answers_and_counterfactual_records():
    assert perturb_answer("yes", 0, "k") == "no"
    mc = perturb_answer("B", 0, "k", choices=["A", "B", "C"])
    assert mc in ("A", "C")
    nums = {perturb_answer("40", s, "k") for s in range(20)}
    assert "40" not in nums and all(abs(int(x) - 40) <= 8 for x in nums)
    assert perturb_answer("40", 3, "k") == perturb_answer("40", 3, "k")
    with pytest.raises(ValueError, match="cannot perturb"):
        perturb_answer("blue", 0, "k")
    r = rec("q9")
    edited = answer_edited_rationale(r, "17")
    assert edited is not None
    text, steps = edited
    assert text == "2 plus 3 is 5. So we get 17."
    assert [text[a:b] for a, b in steps] == ["2 plus 3 is 5.", "So we get 17."]
    cf = counterfactual_record(r, text, steps, "17")
    assert cf.sample_id == "q9#cf" and cf.question.startswith("[counterfactual] ")
    assert cf.answer == "17" and cf.meta["given"] == "all" and cf.meta["gold_answer"] == "5"
    assert answer_edited_rationale(rec("q0", rationale="No numbers here."), "3") is None
