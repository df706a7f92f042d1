"""Step segmentation (docs/method.md, 'Map from the paper to the code').

If the text contains newlines, each non-empty line is a step. Otherwise cut after a "." that is
followed by whitespace or ends the text (so "3.5" and "110*.3=33" stay whole); empty pieces are
dropped. A final piece starting with "Therefore, the answer is" (case-insensitive) belongs to the
answer part and is removed from the rationale; the answer sentence is rebuilt from the template.
``mode="period"`` is the paper's plain "." split, kept for comparison.
"""

from __future__ import annotations

import re

from kpod.data.records import Span

ANSWER_SENTENCE_RE = re.compile(r"therefore,?\s+the\s+answer\s+is\b", re.IGNORECASE)
_SENTENCE_END_RE = re.compile(r"\.(?=\s|$)")


def _strip_span(text: str, start: int, end: int) -> Span | None:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return (start, end) if end > start else None


def _pieces(text: str, mode: str) -> list[Span]:
    spans: list[Span] = []
    if mode == "default" and "\n" in text:
        pos = 0
        for line in text.split("\n"):
            s = _strip_span(text, pos, pos + len(line))
            if s:
                spans.append(s)
            pos += len(line) + 1
        return spans
    if mode == "period":
        cuts = [m.end() for m in re.finditer(r"\.", text)]
    elif mode == "default":
        cuts = [m.end() for m in _SENTENCE_END_RE.finditer(text)]
    else:
        raise ValueError(f"unknown step splitting mode {mode!r} (expected 'default' or 'period')")
    start = 0
    for cut in [*cuts, len(text)]:
        s = _strip_span(text, start, cut)
        if s:
            spans.append(s)
        start = cut
    return spans


def _final_answer_start(text: str) -> int | None:
    """Start of a trailing "Therefore, the answer is …" sentence, if the text ends with one.

    It must begin a sentence (text before it is empty or ends with ".", ":", "!", "?" or a
    newline) and be the last piece: nothing but its own sentence may follow it.
    """
    matches = list(ANSWER_SENTENCE_RE.finditer(text))
    if not matches:
        return None
    m = matches[-1]
    before = text[: m.start()]
    if before.strip() and not (before.rstrip().endswith((".", ":", "!", "?")) or "\n" in before[len(before.rstrip()) :]):
        return None
    rest = text[m.end() :].strip()
    if "\n" in rest or re.search(r"\.\s+\S", rest):
        return None
    return m.start()


def split_steps(text: str, mode: str = "default") -> tuple[str, tuple[Span, ...]]:
    """Split a teacher rationale into steps.

    Returns ``(rationale, spans)``: the rationale with any trailing answer sentence removed
    (and trailing whitespace stripped) and the step spans into that string.
    """
    cut = _final_answer_start(text)
    body = text if cut is None else text[:cut]
    spans = _pieces(body, mode)
    end = spans[-1][1] if spans else 0
    return body[:end], tuple(spans)
