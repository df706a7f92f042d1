"""What every teacher backend returns, and the error it raises."""

from __future__ import annotations

from dataclasses import dataclass


class TeacherError(RuntimeError):
    """The teacher cannot be used as configured (names the recipe field or env variable)."""


class TeacherUnavailable(TeacherError):
    """The teacher kept failing after every retry; what was generated is saved, rerun to resume."""


@dataclass
class Completion:
    """One reply: the text, why it stopped ("stop", "length", …) and its token counts."""

    text: str
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    attempts: int = 1
    latency_s: float = 0.0
