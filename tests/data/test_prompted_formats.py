"""The prompted baselines' data formats (dsbs, specialized_kd, scott) and the per-record template
overrides they rely on, on hand-made records."""

from __future__ import annotations

from collections import Counter

import pytest
from pydantic import ValidationError

from kpod.data.formats import SKD_FORMATS
from kpod.data.prompted_formats import Dsbs, Scott, SpecializedKd
from kpod.data.records import DataError, Record, records_digest
from kpod.data.template import PromptTemplate


def rec(sid: str, a: int = 5, meta: dict | None = None) -> Record:
    rationale = f"2 plus 3 is 5. So we get {a}."
    return Record(sid, f"What is {sid}?", rationale, ((0, 14), (15, len(rationale))), str(a), meta or {})


def test_plain_records_render_as_before_and_overrides_apply_per_record():
    t = PromptTemplate()
    r = rec("q1")
    assert t.serialize(r).text == "Q: What is q1? A: Let's think step by step. 2 plus 3 is 5. So we get 5. " \
                                  "Therefore, the answer is 5"
    assert t.prompt(r) == t.inference_prefix(r.question) == "Q: What is q1? A: Let's think step by step."
    assert records_digest([r]) == records_digest([rec("q1", meta={"where": "x"})])  # other meta: same digest
    bare = rec("q1", meta={"trigger": "", "demos": "Q: 1+1?\nA: 2\n\n"})
    ser = t.serialize(bare)
    assert ser.text.startswith("Q: 1+1?\nA: 2\n\nQ: What is q1? A: 2 plus 3")
    assert ser.text[ser.steps[0][0]:ser.steps[0][1]] == "2 plus 3 is 5."  # spans still land on the steps
    assert t.prompt(bare) == "Q: 1+1?\nA: 2\n\nQ: What is q1? A:"
    assert records_digest([bare]) != records_digest([r])  # caches see the override
    with pytest.raises(DataError, match="trigger"):
        t.prompt(rec("q1", meta={"trigger": 3}))


def splits():
    return {"train": [rec(f"t{i}", a=i + 2) for i in range(6)], "validation": [rec("v0"), rec("v1")]}


def test_dsbs_format_two_prefixed_tasks_per_question_and_label_task_evaluation():
    fmt = Dsbs()
    out = fmt.expand(splits(), seed=0)
    train = {r.sample_id: r for r in out["train"]}
    assert len(train) == 12 and fmt.report["records"]["train"] == 12
    label, rat = train["t1#label"], train["t1#rationale"]
    assert (label.meta["task"], rat.meta["task"]) == ("label", "rationale")
    assert label.question_id == rat.question_id == "t1"
    t = PromptTemplate()
    assert t.serialize(label).text == "Q: predict: What is t1? A: Therefore, the answer is 3"
    assert t.serialize(rat).text.startswith("Q: explain: What is t1? A: 2 plus 3 is 5.")
    assert [r.sample_id for r in out["validation"]] == ["v0", "v1"]  # evaluation keeps its ids
    assert t.prompt(out["validation"][0]) == "Q: predict: What is v0? A:"  # the label task's prompt
    assert splits()["validation"][0].meta == {}  # the source records are not changed
    with pytest.raises(ValueError, match="differ"):
        Dsbs(Dsbs.Params(label_prefix="x: ", rationale_prefix="x: ")).expand(splits(), 0)


def skd_records(n: int) -> list[Record]:
    return [rec(f"q{i:03d}", a=i) for i in range(n)]


def test_specialized_kd_mixture_follows_the_ratio_exactly_and_is_deterministic():
    ratio = {"in_context_cot": 0.5, "zero_shot_cot": 1.0, "in_context_answer_only": 0.25, "zero_shot_answer_only": 0.0}
    params = SpecializedKd.Params(ratio=ratio, n_demos=2)
    out = SpecializedKd(params).expand({"train": skd_records(40), "test": [rec("x")]}, seed=3)
    counts = Counter(r.meta["format"] for r in out["train"])
    assert counts == {"in_context_cot": 20, "zero_shot_cot": 40, "in_context_answer_only": 10}
    again = SpecializedKd(params).expand({"train": skd_records(40)[::-1], "test": [rec("x")]}, seed=3)
    assert [r.sample_id for r in again["train"]] == [r.sample_id for r in out["train"]]  # input order irrelevant
    other = SpecializedKd(params).expand({"train": skd_records(40)}, seed=4)
    picked = lambda o: {r.sample_id for r in o["train"] if r.meta["format"] == "in_context_cot"}  # noqa: E731
    assert picked(other) != picked(out)  # the seed chooses which records
    t = PromptTemplate()
    ao = next(r for r in out["train"] if r.meta["format"] == "in_context_answer_only")
    assert t.prompt(ao).count("Q: ") == 3 and t.prompt(ao).endswith("A:")  # 2 demos, no trigger
    assert t.serialize(ao).text.endswith("A: Therefore, the answer is " + ao.answer)
    zc = next(r for r in out["train"] if r.meta["format"] == "zero_shot_cot")
    assert t.serialize(zc).text.startswith("Q: What is") and "Let's think step by step." in t.serialize(zc).text
    assert out["test"][0] is not None and t.prompt(out["test"][0]) == t.prompt(rec("x"))  # zero-shot CoT eval
    assert SpecializedKd.Params().ratio is None and len(SpecializedKd().expand({"train": skd_records(3)}, 0)["train"]) == 12
    assert set(SKD_FORMATS) == set(ratio)


def test_specialized_kd_teacher_keys_and_unknown_formats():
    out = SpecializedKd().expand({"train": skd_records(3)}, 0)["train"]
    for r in out:  # CoT formats share their source record's stored distributions; answer-only has none
        cot = r.meta["format"].endswith("_cot")
        assert r.meta["teacher_key"] == (r.meta["source_id"] if cot else None)
    with pytest.raises(ValidationError, match="unknown format"):
        SpecializedKd.Params(ratio={"few_shot": 1.0})


def test_scott_format_factual_and_counterfactual_examples():
    data = splits()
    data["train"].append(Record("t9", "What?", "No answer stated here.", ((0, 22),), "4", {}))
    fmt = Scott()
    out = fmt.expand(data, seed=0)
    train = {r.sample_id: r for r in out["train"]}
    fa, cf = train["t1#factual"], train["t1#cf"]
    assert fa.question.startswith("[factual] ") and fa.answer == "3" and fa.meta["task"] == "factual"
    assert cf.question.startswith("[counterfactual] ") and cf.meta["task"] == "counterfactual"
    assert cf.answer != "3" and cf.meta["gold_answer"] == "3"
    assert cf.rationale.endswith(f"So we get {cf.answer}.")  # the rationale supports the perturbed answer
    assert cf.meta["given"] == "all" and cf.question_id == fa.question_id == "t1"
    assert "t9#cf" not in train and fmt.report["no_counterfactual"]["sample_ids"] == ["t9"]  # counted
    assert [r.question for r in out["validation"]] == ["[factual] What is v0?", "[factual] What is v1?"]
    assert Scott().expand(splits(), seed=0)["train"] == out["train"][: len(out["train"]) - 1]  # deterministic


def test_scott_teacher_counterfactuals_are_matched_by_question_id_one_per_question():
    train = [rec("t1"), rec("t2"), Record("t3#0", "What is t3?", "a.", ((0, 2),), "4", {}, "t3"),
             Record("t3#1", "What is t3?", "b.", ((0, 2),), "4", {}, "t3")]

    def cf(qid: str, answer: str, question: str | None = None) -> Record:
        return Record(f"{qid}#counterfactual", question or f"What is {qid}?", "Because so.", ((0, 11),), answer, {})

    data = {"train": train, "train_counterfactual": [cf("t3", "9"), cf("t1", "7"), cf("zz", "1")], "test": [rec("x")]}
    fmt = Scott(Scott.Params(counterfactual="teacher"))
    out = fmt.expand(data, seed=0)
    assert set(out) == {"train", "test"}  # the counterfactual split is read, not trained or evaluated
    ids = [r.sample_id for r in out["train"]]
    assert ids == ["t1#factual", "t1#cf", "t2#factual", "t3#0#factual", "t3#0#cf", "t3#1#factual"]
    by = {r.sample_id: r for r in out["train"]}
    assert (by["t1#cf"].answer, by["t1#cf"].rationale, by["t1#cf"].meta["gold_answer"]) == ("7", "Because so.", "5")
    assert by["t3#0#cf"].answer == "9" and by["t3#0#cf"].question_id == "t3"
    assert fmt.report["no_counterfactual"]["sample_ids"] == ["t2"] and fmt.report["counterfactuals"] == 2
    assert fmt.report["unused_counterfactuals"] == {"count": 1, "question_ids": ["zz"]}
    with pytest.raises(DataError, match="question differs"):
        fmt.expand({**data, "train_counterfactual": [cf("t1", "7", "What is t9?")]}, 0)
    with pytest.raises(DataError, match="is the gold answer"):
        fmt.expand({**data, "train_counterfactual": [cf("t1", "5")]}, 0)
    with pytest.raises(DataError, match="must end in '#counterfactual'"):
        fmt.expand({**data, "train_counterfactual": [rec("t1")]}, 0)
