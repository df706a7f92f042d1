"""Where a wrong chain first goes wrong: per-operation error analysis of arithmetic rationales.

A rationale of the built-in ``arith`` data (and any rationale written as ``a op b = c`` statements,
one per step) is read as its list of equations. A wrong prediction is compared with the gold
rationale equation by equation, and filed under the *first* difference:

* ``no_equation`` — the output states no equation at all;
* ``wrong_operation`` — the step uses another operator than the gold step;
* ``wrong_operand`` — right operator, but the number taken from the question differs;
* ``carried_wrong`` — the step starts from another value than the previous step's result;
* ``arithmetic`` — operands and operator are right, the result is not ``a op b``
  (a wrong arithmetic fact; counted per operator: which operations the student has not learned);
* ``stopped_early`` / ``extra_steps`` — every shared step is right, but there are fewer or more
  steps than in the gold chain;
* ``answer_sentence`` — the whole chain is right and only the stated answer is not.

The classification reads only the prediction's text and the gold rationale (matched by
``sample_id``), so it applies to any run directory's ``predictions.jsonl``.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

EQUATION = re.compile(r"(-?\d+(?:\.\d+)?)\s*([+\-*/×÷x])\s*(-?\d+(?:\.\d+)?)\s*=\s*(-?\d+(?:\.\d+)?)")
_CANONICAL = {"×": "*", "x": "*", "÷": "/"}
CATEGORIES = ("no_equation", "wrong_operation", "wrong_operand", "carried_wrong", "arithmetic",
              "stopped_early", "extra_steps", "answer_sentence")


@dataclass(frozen=True)
class Equation:
    left: float
    op: str
    right: float
    result: float

    def value(self) -> float | None:
        """What ``left op right`` is (None for a division by zero)."""
        if self.op == "+":
            return self.left + self.right
        if self.op == "-":
            return self.left - self.right
        if self.op == "*":
            return self.left * self.right
        return None if self.right == 0 else self.left / self.right


@dataclass(frozen=True)
class FirstError:
    category: str
    step: int | None  # 0-based index of the first wrong step (None: no step to blame)
    op: str | None  # the gold step's operator at that step


def equations(text: str) -> list[Equation]:
    """Every ``a op b = c`` statement of a text, in order."""
    out = []
    for a, op, b, c in EQUATION.findall(text):
        out.append(Equation(float(a), _CANONICAL.get(op, op), float(b), float(c)))
    return out


def first_error(output: str, gold_rationale: str) -> FirstError:
    """The first place a (wrong) output departs from the gold chain; see the module docstring."""
    got, want = equations(output), equations(gold_rationale)
    if not got:
        return FirstError("no_equation", None, want[0].op if want else None)
    for i, (g, w) in enumerate(zip(got, want)):
        if g.op != w.op:
            return FirstError("wrong_operation", i, w.op)
        if g.right != w.right:
            return FirstError("wrong_operand", i, w.op)
        if g.left != w.left:
            # step 0's left operand comes from the question; later ones carry the last result
            category = "wrong_operand" if i == 0 else "carried_wrong"
            return FirstError(category, i, w.op)
        if g.result != g.value():
            return FirstError("arithmetic", i, w.op)
    if len(got) < len(want):
        return FirstError("stopped_early", len(got), want[len(got)].op)
    if len(got) > len(want):
        return FirstError("extra_steps", len(want), None)
    return FirstError("answer_sentence", None, None)


@dataclass
class ErrorTally:
    """Counts over the predictions of one run (or of several seeds of one variant)."""

    n: int = 0
    wrong: int = 0
    categories: Counter[str] = field(default_factory=Counter)  # first error of each wrong answer
    arithmetic_by_op: Counter[str] = field(default_factory=Counter)  # the "arithmetic" ones, by operator
    n_by_steps: Counter[int] = field(default_factory=Counter)  # questions by gold chain length
    wrong_by_steps: Counter[int] = field(default_factory=Counter)

    def add(self, output: str, gold_rationale: str, correct: bool) -> None:
        n_steps = len(equations(gold_rationale))
        self.n += 1
        self.n_by_steps[n_steps] += 1
        if correct:
            return
        self.wrong += 1
        self.wrong_by_steps[n_steps] += 1
        err = first_error(output, gold_rationale)
        self.categories[err.category] += 1
        if err.category == "arithmetic" and err.op is not None:
            self.arithmetic_by_op[err.op] += 1
