"""The record every component exchanges: one question with one rationale, keyed by sample_id."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Span = tuple[int, int]


@dataclass(frozen=True)
class Record:
    """One training/evaluation example.

    ``steps`` are ``(start, end)`` character spans into ``rationale`` (end exclusive).
    ``sample_id`` comes from the source (never from load order) and travels end to end.
    ``meta`` holds source-specific side data, e.g. the synthetic generator's
    ``keypoint_spans`` / ``filler_spans`` (character spans into ``rationale``).
    """

    sample_id: str
    question: str
    rationale: str
    steps: tuple[Span, ...]
    answer: str
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def n_steps(self) -> int:
        return len(self.steps)

    def step_texts(self) -> list[str]:
        return [self.rationale[s:e] for s, e in self.steps]


class DataError(ValueError):
    """Bad input data; the message names the file and line (or the sample_id)."""


def check_unique_ids(records: list[Record], where: str) -> None:
    seen: dict[str, int] = {}
    for i, r in enumerate(records):
        if r.sample_id in seen:
            raise DataError(
                f"{where}: duplicate sample_id {r.sample_id!r} (rows {seen[r.sample_id] + 1} and {i + 1})"
            )
        seen[r.sample_id] = i
