"""The first-error classification of wrong arithmetic chains, on hand-made outputs."""

from __future__ import annotations

import pytest

from kpod.data.synthetic import generate_splits
from kpod.reports.arith_errors import ErrorTally, equations, first_error

GOLD = ("First, we take away the 4 eggs, so 19 - 4 = 15 eggs. Then we find three times as many, "
        "so 15 * 3 = 45 eggs. Then we add the 19 new eggs, so 45 + 19 = 64 eggs. The answer is 64.")


def test_equations_are_read_in_order() -> None:
    eqs = equations(GOLD)
    assert [(e.left, e.op, e.right, e.result) for e in eqs] == [(19, "-", 4, 15), (15, "*", 3, 45), (45, "+", 19, 64)]
    assert [e.value() for e in eqs] == [15, 45, 64]


@pytest.mark.parametrize(
    ("output", "category", "step", "op"),
    [
        ("I do not know. The answer is 3.", "no_equation", None, "-"),
        ("so 19 + 4 = 23 eggs. so 23 * 3 = 69. The answer is 69.", "wrong_operation", 0, "-"),
        ("so 19 - 5 = 14 eggs. The answer is 14.", "wrong_operand", 0, "-"),
        ("so 18 - 4 = 14 eggs. The answer is 14.", "wrong_operand", 0, "-"),  # first value read wrong
        ("so 19 - 4 = 15. so 16 * 3 = 48. The answer is 48.", "carried_wrong", 1, "*"),
        ("so 19 - 4 = 15. so 15 * 3 = 45. so 45 + 19 = 65. The answer is 65.", "arithmetic", 2, "+"),
        ("so 19 - 4 = 15. so 15 * 3 = 45. The answer is 45.", "stopped_early", 2, "+"),
        ("so 19 - 4 = 15. so 15 * 3 = 45. so 45 + 19 = 64. so 64 - 1 = 63. The answer is 63.", "extra_steps", 3, None),
        ("so 19 - 4 = 15. so 15 * 3 = 45. so 45 + 19 = 64. The answer is 46.", "answer_sentence", None, None),
    ],
)
def test_first_error_category(output: str, category: str, step: int | None, op: str | None) -> None:
    err = first_error(output, GOLD)
    assert (err.category, err.step, err.op) == (category, step, op)


def test_a_wrong_result_is_blamed_on_arithmetic_even_if_later_steps_carry_it() -> None:
    # 15 * 3 = 44 is the first error; the next step carries 44 correctly but is not blamed
    err = first_error("so 19 - 4 = 15. so 15 * 3 = 44. so 44 + 19 = 63. The answer is 63.", GOLD)
    assert (err.category, err.step, err.op) == ("arithmetic", 1, "*")


def test_gold_rationales_of_the_builtin_data_parse_to_one_equation_per_step() -> None:
    splits = generate_splits(seed=3, sizes={"train": 40}, min_steps=2, max_steps=5, ood_min_steps=6,
                             ood_max_steps=7, max_value=100, max_operand=20, filler_prob=0.5)
    for r in splits["train"]:
        eqs = equations(r.rationale)
        assert len(eqs) == r.meta["n_ops"]
        assert all(e.value() == e.result for e in eqs)  # the gold chain is right
        assert eqs[-1].result == float(r.answer)


def test_tally_counts_wrong_answers_by_category_operator_and_length() -> None:
    t = ErrorTally()
    t.add(GOLD, GOLD, True)
    t.add("so 19 - 4 = 15. so 15 * 3 = 44. The answer is 44.", GOLD, False)
    t.add("nothing", GOLD, False)
    assert (t.n, t.wrong) == (3, 2)
    assert t.categories == {"arithmetic": 1, "no_equation": 1}
    assert t.arithmetic_by_op == {"*": 1}
    assert t.n_by_steps == {3: 3} and t.wrong_by_steps == {3: 2}
