"""kpod.answers: answer extraction and comparison (spec §10(n))."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kpod.answers import ChoiceExtractor, NumericExtractor, normalize_number


@pytest.fixture
def num() -> NumericExtractor:
    return NumericExtractor()


@pytest.fixture
def choice() -> ChoiceExtractor:
    return ChoiceExtractor()


# --- where the answer is taken from ---------------------------------------------------------
@pytest.mark.parametrize(
    "text, expected",
    [
        ("First 3 + 4 = 7. Therefore, the answer is 7.", "7"),
        ("the answer is 5. Wait, no: The Answer Is 8, not 5.", "8"),  # last occurrence wins
        ("THE ANSWER IS 42", "42"),
        ("The answer is: 13 apples, from 6 + 7", "13"),
        ("Natalia sold 48 + 24 = 72 clips.\n#### 72", "72"),
        ("the answer is 5 #### 6", "5"),  # 'the answer is' before '####'
        ("We have 2 boxes of 3, so 2 * 3 = 6 eggs", "6"),  # last number
        ("We have 12 - 3 = 9 apples.", "9"),
        ("12 - 3 = 9", "9"),
    ],
)
def test_extraction_priority(num, text, expected):
    assert num.extract(text) == expected


def test_subtraction_is_not_a_negative_number(num):
    assert num.extract("Then 12 - 3") == "3"
    assert normalize_number("12 - 3 = 9") == 12.0


def test_answer_is_without_number_on_its_line_looks_further(num):
    assert num.extract("I am not sure what the answer is.\n#### 17") == "17"
    # the number on the 'answer is' line wins over later ones
    assert num.extract("The answer is 4 dollars.\nCheck: 8") == "4"


def test_no_number_is_none(num):
    assert num.extract("I do not know.") is None
    assert num.extract("The answer is nothing") is None
    assert num.extract("") is None
    assert num.is_correct(None, "3") is False
    assert num.is_correct(num.extract("no idea"), "3") is False


# --- normalisation ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, value",
    [
        ("1,000", 1000.0),
        ("1,234,567", 1234567.0),
        ("$1,000.50.", 1000.5),
        ("$5", 5.0),
        ("-5", -5.0),
        ("$-5", -5.0),
        ("-$5", -5.0),
        ("3.25", 3.25),
        ("72.", 72.0),
        (".5", 0.5),
        ("costs $ 20 total", 20.0),
    ],
)
def test_normalize_number(text, value):
    assert normalize_number(text) == pytest.approx(value)


def test_normalize_number_none():
    assert normalize_number("no digits here") is None


@pytest.mark.parametrize(
    "output, gold",
    [
        ("Therefore, the answer is $1,000.", "1000"),
        ("Therefore, the answer is -5.", "-5"),
        ("Therefore, the answer is $-5.", "-5"),
        ("the answer is 72", "72.0"),
        ("the answer is 72.0", "72"),
        ("the answer is 2.5 hours", "2.50"),
        ("#### 18,000", "18000"),
    ],
)
def test_end_to_end_correct(num, output, gold):
    assert num.is_correct(num.extract(output), gold)


@pytest.mark.parametrize(
    "output, gold",
    [
        ("the answer is 71", "72"),
        ("the answer is 5", "-5"),
        ("the answer is 12 - 3 = 9", "-3"),
        ("12 - 3 = 9", "-3"),
        ("the answer is 1,000", "100"),
        ("the answer is 72.5", "72"),
    ],
)
def test_end_to_end_wrong(num, output, gold):
    assert not num.is_correct(num.extract(output), gold)


def test_tolerance(num):
    assert num.is_correct("72.00005", "72")
    assert num.is_correct("0.33333", "0.333333")
    assert not num.is_correct("0.3", "0.4")
    assert not num.is_correct("0.0002", "0")


@settings(max_examples=100, deadline=None)
@given(st.integers(-(10**6), 10**6))
def test_property_formatted_integer_round_trip(n):
    ex = NumericExtractor()
    sign = "-" if n < 0 else ""
    text = f"so the total is {sign}${abs(n):,}."
    assert ex.is_correct(ex.extract(f"Therefore, the answer is {text}"), str(n))
    assert ex.is_correct(ex.extract(text), str(n))


def test_tolerance_is_absolute(num):
    assert not num.is_correct("72.001", "72")
    assert not num.is_correct("100001", "100000")


# --- multiple choice -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, expected",
    [
        ("Birds fly, so the answer is (C).", "C"),
        ("The answer is C.", "C"),
        ("The answer is: E", "E"),
        ("(A) is wrong and (B) too. Therefore, the answer is (D)", "D"),
        ("the answer is (A). Wait, the answer is (B), since A fails.", "B"),
        ("Options considered: (A) then (E)", "E"),  # no 'answer is': last letter
    ],
)
def test_choice_extract(choice, text, expected):
    assert choice.extract(text) == expected


def test_choice_compare(choice):
    pred = choice.extract("so the answer is (C)")
    assert choice.is_correct(pred, "C")
    assert choice.is_correct(pred, "(C)")
    assert not choice.is_correct(pred, "B")
    assert not choice.is_correct(None, "C")
    assert choice.extract("no letter here") is None
