"""kpod.data.steps.split_steps and the synthetic generator's step spans."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kpod.data.sources import Arith
from kpod.data.steps import split_steps


def texts(rationale: str, spans) -> list[str]:
    return [rationale[s:e] for s, e in spans]


def assert_well_formed(rationale: str, spans) -> None:
    prev_end = 0
    for s, e in spans:
        assert prev_end <= s < e <= len(rationale)
        piece = rationale[s:e]
        assert piece == piece.strip() and piece
        prev_end = e


# --- newline mode --------------------------------------------------------------------------
def test_newlines_make_steps_and_drop_empty_lines():
    text = "First add 3 and 4 to get 7.\n\n   Then double it: 14.  \n\t\nFinally subtract 2. So 12"
    rationale, spans = split_steps(text)
    assert texts(rationale, spans) == [
        "First add 3 and 4 to get 7.",
        "Then double it: 14.",
        "Finally subtract 2. So 12",  # inside a line, "." does not split
    ]
    assert_well_formed(rationale, spans)


def test_newline_mode_with_answer_sentence_at_end_of_last_line():
    text = "a = 2 + 3 = 5.\nb = 5 * 2 = 10. Therefore, the answer is 10."
    rationale, spans = split_steps(text)
    assert texts(rationale, spans) == ["a = 2 + 3 = 5.", "b = 5 * 2 = 10."]
    assert "answer" not in rationale.lower()
    assert rationale == "a = 2 + 3 = 5.\nb = 5 * 2 = 10."


def test_newline_mode_with_answer_sentence_on_its_own_line():
    rationale, spans = split_steps("x = 1.\ny = 2.\ntherefore, THE answer IS 2.\n")
    assert texts(rationale, spans) == ["x = 1.", "y = 2."]
    assert rationale == "x = 1.\ny = 2."


# --- sentence mode -------------------------------------------------------------------------
def test_period_split_never_between_digits():
    text = "He pays 110*.3=33 dollars. Then 3.5 + 1 = 4.5. Done."
    rationale, spans = split_steps(text)
    assert rationale == text
    assert texts(rationale, spans) == ["He pays 110*.3=33 dollars.", "Then 3.5 + 1 = 4.5.", "Done."]


def test_period_followed_by_non_space_does_not_split():
    rationale, spans = split_steps("See e.g.the list. Next one.")
    assert texts(rationale, spans) == ["See e.g.the list.", "Next one."]


@pytest.mark.parametrize(
    "answer",
    [
        "Therefore, the answer is 12.",
        "therefore, the answer is 12",
        "THEREFORE, THE ANSWER IS 4.5.",
    ],
)
def test_final_answer_sentence_removed(answer):
    text = f"We have 3 boxes. Each holds 4 apples, so 3 * 4 = 12. {answer}"
    rationale, spans = split_steps(text)
    assert texts(rationale, spans) == ["We have 3 boxes.", "Each holds 4 apples, so 3 * 4 = 12."]
    assert rationale == "We have 3 boxes. Each holds 4 apples, so 3 * 4 = 12."
    assert "answer" not in rationale.lower()


def test_answer_sentence_in_the_middle_is_a_step():
    text = "Therefore, the answer is probably 3. Let me check: 1 + 2 = 3."
    rationale, spans = split_steps(text)
    assert len(spans) == 2
    assert texts(rationale, spans)[0].startswith("Therefore")


def test_only_an_answer_sentence_gives_no_steps():
    assert split_steps("Therefore, the answer is 5.") == ("", ())
    assert split_steps("") == ("", ())
    assert split_steps("   \n  \n") == ("", ())


def test_period_mode_splits_on_every_period():
    text = "He pays 110*.3=33 dollars. Then 3.5 + 1. a.b"
    rationale, spans = split_steps(text, "period")
    assert texts(rationale, spans) == [
        "He pays 110*.",
        "3=33 dollars.",
        "Then 3.",
        "5 + 1.",
        "a.",
        "b",
    ]
    assert_well_formed(rationale, spans)


def test_period_mode_removes_final_answer_sentence():
    rationale, spans = split_steps("A is 1. B is 2. Therefore, the answer is 3.", "period")
    assert texts(rationale, spans) == ["A is 1.", "B is 2."]


def test_period_mode_removes_final_answer_sentence_with_decimal_answer():
    rationale, spans = split_steps("A is 1. B is 2.5. Therefore, the answer is 3.5.", "period")
    assert "answer" not in rationale.lower()


def test_unknown_mode_raises():
    with pytest.raises(ValueError, match="mode"):
        split_steps("a. b.", "sentences")


def test_spans_index_into_returned_rationale():
    text = "  Leading space. Second   step.   Third one.  Therefore, the answer is 3.  "
    rationale, spans = split_steps(text)
    assert_well_formed(rationale, spans)
    assert texts(rationale, spans) == ["Leading space.", "Second   step.", "Third one."]
    assert rationale == rationale.rstrip()
    assert rationale.endswith("Third one.")


# --- property: nothing lost, nothing duplicated --------------------------------------------
_word = st.one_of(
    st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCXYZ", min_size=1, max_size=8),
    st.integers(0, 10_000).map(str),
    st.tuples(st.integers(0, 999), st.integers(0, 99)).map(lambda t: f"{t[0]}.{t[1]}"),
    st.sampled_from(["+", "-", "*", "=", "$4", "110*.3", ",", ":"]),
)
_sentence = st.lists(_word, min_size=1, max_size=8).map(" ".join)


@settings(max_examples=150, deadline=None)
@given(sentences=st.lists(_sentence, min_size=1, max_size=8), trailing=st.booleans())
def test_property_sentences_joined_by_period_space(sentences, trailing):
    text = ". ".join(sentences) + ("." if trailing else "")
    assert not re.search(r"therefore", text, re.IGNORECASE)
    rationale, spans = split_steps(text)
    assert_well_formed(rationale, spans)
    # one step per sentence, decimals never cut
    assert len(spans) == len(sentences)
    steps = texts(rationale, spans)
    for step, sentence in zip(steps, sentences, strict=True):
        assert step.rstrip(".") == sentence
    # nothing lost or duplicated (ignoring whitespace)
    squash = lambda s: re.sub(r"\s+", "", s)  # noqa: E731
    assert "".join(squash(s) for s in steps) == squash(rationale) == squash(text)


@settings(max_examples=100, deadline=None)
@given(lines=st.lists(st.text(alphabet="ab1. \t", max_size=12), min_size=1, max_size=6))
def test_property_newline_mode(lines):
    text = "\n".join(lines)
    if "\n" not in text:
        return
    rationale, spans = split_steps(text)
    assert_well_formed(rationale, spans)
    assert texts(rationale, spans) == [ln.strip() for ln in lines if ln.strip()]


# --- the synthetic generator agrees with the splitter --------------------------------------
def test_synthetic_records_steps_match_split_steps():
    splits = Arith(Arith.Params(seed=7, n_train=250, n_validation=30, n_test=30, n_ood=40, min_steps=1)).load()
    n = 0
    for records in splits.values():
        for r in records:
            rationale, spans = split_steps(r.rationale)
            assert rationale == r.rationale, r.sample_id
            assert spans == r.steps, r.sample_id
            assert len(r.steps) == r.meta["n_ops"]
            n += 1
    assert n == 350
