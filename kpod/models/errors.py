"""The error every model loader raises, and the one-line cause it quotes.

Below :mod:`kpod.models.student` and :mod:`kpod.models.gguf`, which both raise it (a
:class:`~kpod.models.gguf.GGUFError` is a ``StudentError``), so neither imports the other for it.
"""

from __future__ import annotations


class StudentError(ValueError):
    """The student cannot be built as the recipe asks (names the recipe field)."""


def first_line(e: BaseException, after: str | None = None) -> str:
    """The first line of an error's message (or the line after ``after`` in it), shortened."""
    lines = [x.strip() for x in str(e).splitlines() if x.strip()]
    if after is not None:
        for i, x in enumerate(lines):
            if after in x:
                rest = x.split(after, 1)[1].strip() or (lines[i + 1] if i + 1 < len(lines) else "")
                return rest[:160]
    return (lines or [type(e).__name__])[0][:160]
