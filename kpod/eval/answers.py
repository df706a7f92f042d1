"""Answer extraction and comparison (the rules, and where they differ from lm-evaluation-harness:
docs/tracking_eval_report.md, "How answers are read").

A number is an optional sign (``-`` or the Unicode minus ``−``; a minus right after a word,
a digit or ``)`` is subtraction, not a sign), an optional currency sign ($ € £), digits with optional
thousands separators (``1,000``) and decimals (``2.5``, ``.5``), then optionally ``/N`` (a fraction,
``3/4`` = 0.75) and an exponent (``1e3`` = 1000). A trailing ``%`` or unit is ignored.

Where a model output's answer is taken from, first rule that finds a number:

1. ``####`` (GSM8K's convention): the first number after the first ``####``.
2. The answer sentence: the text after the last "the answer is" (case-insensitive) up to the end
   of that line or sentence. If it holds ``=``, the number right after the last ``=`` (``2 - 7 =
   -5`` → -5); otherwise its first number not written as "not N" (``not 5, it is 7`` → 7). With no
   number in the sentence, the first number after it.
3. The last number in the output.

A gold answer must hold exactly one number in this grammar (``3/4``, ``−5``, ``1e3`` and ``$1,000``
are read as 0.75, -5, 1000 and 1000); a gold answer with none, with two (``5 or 6``, ``1 1/2``) or
with a zero denominator is a bad row naming its file:line, never a different number.
Numbers are compared as floats with an absolute tolerance (1e-4 by default). Multiple choice
compares the option letter A–E, with or without parentheses.
"""

from __future__ import annotations

import math
import re
from typing import ClassVar

from pydantic import BaseModel, ConfigDict

from kpod.component import Component
from kpod.registry import ANSWER_EXTRACTORS

_ANSWER_IS = re.compile(r"the\s+answer\s+is\s*:?", re.IGNORECASE)
_SIGN = "[-\u2212]"
_NUMBER = re.compile(
    rf"(?:(?<![\w)])({_SIGN}))?"  # a sign, unless it follows a word or ')' (then: subtraction)
    rf"(?:[$€£]\s?({_SIGN})?)?"  # a currency sign, and a sign after it: $-5
    r"((?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)"
    r"(?:/(\d+))?"  # a fraction: 3/4
    r"(?:[eE]([+-]?\d+))?"  # an exponent: 1e3
)
_SENTENCE_END = re.compile(r"\n|\.(?=\s|$)")
_NEGATED = re.compile(r"\bnot\s*$", re.IGNORECASE)
_LETTER = re.compile(r"\(?\b([A-E])\b\)?")


def _canonical(m: re.Match[str]) -> str:
    """A matched number as plain ASCII: sign, digits without separators, /den, e±exp."""
    sign = "-" if (m.group(1) or m.group(2)) else ""
    den = f"/{m.group(4)}" if m.group(4) else ""
    exp = f"e{m.group(5)}" if m.group(5) else ""
    return sign + m.group(3).replace(",", "") + den + exp


def _value(m: re.Match[str]) -> float | None:
    """The number's value; None for a zero denominator."""
    value = float(m.group(3).replace(",", "") + (f"e{m.group(5)}" if m.group(5) else ""))  # 1e999: inf
    if m.group(4):
        if int(m.group(4)) == 0:
            return None
        value /= int(m.group(4))
    return -value if (m.group(1) or m.group(2)) else value


def _clean_number(text: str) -> str | None:
    m = _NUMBER.search(text)
    return _canonical(m) if m is not None else None


def normalize_number(text: str) -> float | None:
    """The first number in ``text`` (``"$1,000.50."`` → 1000.5, ``"3/4"`` → 0.75); None if none."""
    m = _NUMBER.search(text)
    return _value(m) if m is not None else None


def parse_gold(gold: str) -> tuple[float | None, str | None]:
    """(value, None) for a gold answer holding exactly one number, else (None, why not)."""
    found = list(_NUMBER.finditer(gold))
    if len(found) != 1:
        what = "no number" if not found else f"{len(found)} numbers"
        return None, f"answer {gold[:40]!r} has {what}; a numeric gold answer must hold exactly one (eval.extractor: numeric)"
    value = _value(found[0])
    if value is None or not math.isfinite(value):
        return None, f"answer {gold[:40]!r} is not a finite number (eval.extractor: numeric)"
    return value, None


def numbers_equal(a: float, b: float, tol: float = 1e-4) -> bool:
    """Absolute tolerance: 72.001 is not 72, and 100001 is not 100000."""
    return math.isfinite(a) and math.isfinite(b) and abs(a - b) <= tol


def _answer_sentence(sentence: str) -> str | None:
    """Rule 2 inside one answer sentence: after the last '=', else the first number not negated."""
    if "=" in sentence:
        after = _clean_number(sentence[sentence.rindex("=") + 1 :])
        if after is not None:
            return after
    for m in _NUMBER.finditer(sentence):
        if not _NEGATED.search(sentence[: m.start()]):
            return _canonical(m)
    return None


class AnswerExtractor(Component):
    """Base of every answer extractor (the ``ANSWER_EXTRACTORS`` registry accepts only subclasses):
    ``extract`` and ``is_correct`` are required; ``check_gold`` is optional."""

    def extract(self, text: str) -> str | None:
        """The answer string found in a model output (not yet normalised), or None."""
        raise NotImplementedError(f"{type(self).__name__}.extract")

    def is_correct(self, predicted: str | None, gold: str) -> bool:
        raise NotImplementedError(f"{type(self).__name__}.is_correct")

    def check_gold(self, gold: str) -> str | None:
        """Why a data set's gold answer cannot be scored (the row is then a bad row, named by
        file:line), or None if it can. Default: every gold answer is scorable."""
        return None


class NumericExtractor(AnswerExtractor):
    """Numeric answers (GSM8K, SVAMP, ASDiv, the built-in arithmetic set)."""

    name: ClassVar[str] = "numeric"

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        tolerance: float = 1e-4

    params: Params

    def extract(self, text: str) -> str | None:
        """The answer in a model output as a plain number string (rules 1-3 above), or None."""
        if "####" in text:
            s = _clean_number(text.split("####", 2)[1])
            if s is not None:
                return s
        hits = list(_ANSWER_IS.finditer(text))
        if hits:
            tail = text[hits[-1].end() :]
            end = _SENTENCE_END.search(tail)
            s = _answer_sentence(tail[: end.start()] if end else tail) or _clean_number(tail)
            if s is not None:
                return s
        nums = list(_NUMBER.finditer(text))
        return _canonical(nums[-1]) if nums else None

    def check_gold(self, gold: str) -> str | None:
        """Why ``gold`` cannot be scored (not exactly one number, :func:`parse_gold`), or None."""
        return parse_gold(gold)[1]

    def is_correct(self, predicted: str | None, gold: str) -> bool:
        if predicted is None:
            return False
        p, g = normalize_number(predicted), parse_gold(gold)[0]
        if p is None or g is None:
            return False
        return numbers_equal(p, g, self.params.tolerance)


class ChoiceExtractor(AnswerExtractor):
    """Multiple choice (CommonsenseQA): compare the option letter A–E."""

    name: ClassVar[str] = "choice"

    def extract(self, text: str) -> str | None:
        hits = list(_ANSWER_IS.finditer(text))
        region = text[hits[-1].end() :] if hits else text
        letters = _LETTER.findall(region)
        if not letters:
            return None
        return letters[0] if hits else letters[-1]

    def check_gold(self, gold: str) -> str | None:
        """Why ``gold`` cannot be scored (no option letter A–E), or None if it can."""
        if _LETTER.search(gold.strip()) is None:
            return f"answer {gold[:40]!r} is not an option letter A-E (eval.extractor: choice)"
        return None

    def is_correct(self, predicted: str | None, gold: str) -> bool:
        if predicted is None:
            return False
        g = _LETTER.search(gold.strip())
        return g is not None and predicted.upper() == g.group(1).upper()


ANSWER_EXTRACTORS.register(NumericExtractor)
ANSWER_EXTRACTORS.register(ChoiceExtractor)
