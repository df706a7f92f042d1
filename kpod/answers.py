"""Answer extraction and comparison (spec §10(n)).

The answer is the text after the last "the answer is" (case-insensitive); failing that, after
"####"; failing that, the last number. Numeric answers lose thousands separators, currency signs
and a trailing period and are compared as floats with tolerance 1e-4. Multiple choice compares
the option letter A–E, with or without parentheses.
"""

from __future__ import annotations

import math
import re
from typing import ClassVar

from pydantic import BaseModel, ConfigDict

from kpod.component import Component
from kpod.registry import ANSWER_EXTRACTORS

_ANSWER_IS = re.compile(r"the\s+answer\s+is\s*:?", re.IGNORECASE)
# optional sign (before or after a currency sign), thousands separators, decimals
_NUMBER = re.compile(r"(-?)(?:\$\s?)?(-?)((?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)")
_LETTER = re.compile(r"\(?\b([A-E])\b\)?")


def _clean_number(text: str) -> str | None:
    m = _NUMBER.search(text)
    if m is None:
        return None
    sign = "-" if (m.group(1) or m.group(2)) else ""
    return sign + m.group(3).replace(",", "")


def normalize_number(text: str) -> float | None:
    """``"$1,000.50."`` → 1000.5; ``None`` if the text holds no number."""
    s = _clean_number(text)
    if s is None:
        return None
    try:
        return float(s)
    except ValueError:
        return None


def numbers_equal(a: float, b: float, tol: float = 1e-4) -> bool:
    """Absolute tolerance: 72.001 is not 72, and 100001 is not 100000."""
    return math.isfinite(a) and math.isfinite(b) and abs(a - b) <= tol


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
        """The answer string found in a model output (not yet normalised), or None."""
        hits = list(_ANSWER_IS.finditer(text))
        if hits:
            tail = text[hits[-1].end() :]
            s = _clean_number(tail.split("\n")[0]) or _clean_number(tail)
            if s is not None:
                return s
        if "####" in text:
            s = _clean_number(text.rsplit("####", 1)[1])
            if s is not None:
                return s
        nums = list(_NUMBER.finditer(text))
        if nums:
            return _clean_number(nums[-1].group(0))
        return None

    def check_gold(self, gold: str) -> str | None:
        """Why ``gold`` cannot be scored (no number in it), or None if it can."""
        if normalize_number(gold) is None:
            return f"answer {gold[:40]!r} is not a number (eval.extractor: numeric)"
        return None

    def is_correct(self, predicted: str | None, gold: str) -> bool:
        if predicted is None:
            return False
        p, g = normalize_number(predicted), normalize_number(gold)
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
