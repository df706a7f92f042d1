"""Step segmentation (spec §10(f)).

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


def split_steps(text: str, mode: str = "default") -> tuple[str, tuple[Span, ...]]:
    """Split a teacher rationale into steps.

    Returns ``(rationale, spans)``: the rationale with any trailing answer sentence removed
    (and trailing whitespace stripped) and the step spans into that string.
    """
    spans = _pieces(text, mode)
    if spans:
        s, e = spans[-1]
        last = text[s:e]
        m = ANSWER_SENTENCE_RE.search(last)
        if m is not None and (m.start() == 0 or last[: m.start()].rstrip().endswith((".", ":"))):
            if m.start() == 0:
                spans.pop()
            else:  # "... = 9. Therefore, the answer is 9." on the same line
                new = _strip_span(text, s, s + m.start())
                spans[-1] = new if new else spans[-1]
    end = spans[-1][1] if spans else 0
    return text[:end], tuple(spans)
