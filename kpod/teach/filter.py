"""Parse the teacher's answers and keep rationales by mode: ``first``, ``all`` or ``correct``.

The same rule as the benchmark sources (item 2): ``correct`` keeps the samples whose parsed
answer equals the gold answer under the recipe's answer extractor. Empty replies are never kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Question:
    """A question sent to the teacher, with its replies by sample index."""

    sample_id: str
    question: str
    gold: str
    replies: dict[int, str] = field(default_factory=dict)  # sample index → completion text
    truncated: set[int] = field(default_factory=set)  # sample indices cut at max_tokens (finish_reason: length)


@dataclass
class Selection:
    """Kept texts and why the others went: every reply is in exactly one count."""

    kept: list[str]
    correct: list[bool]  # per reply, in index order
    dropped_empty: int = 0
    dropped_wrong_answer: int = 0
    dropped_not_first: int = 0
    dropped_truncated: int = 0


def is_correct(extractor: Any, text: str, gold: str) -> bool:
    return bool(text.strip()) and bool(extractor.is_correct(extractor.extract(text), gold))


def select(q: Question, mode: str, extractor: Any, keep_truncated: bool = False) -> Selection:
    """The rationales of ``q`` to keep, in sample-index order; a reply cut at max_tokens is
    dropped (``dropped_truncated``) unless ``keep_truncated``."""
    order = sorted(q.replies)
    texts = [q.replies[i].strip() for i in order]
    cut = [i in q.truncated and not keep_truncated for i in order]
    correct = [is_correct(extractor, t, q.gold) for t in texts]
    s = Selection([], correct)
    if mode == "first":
        s.dropped_not_first = max(0, len(texts) - 1)
        texts = texts[:1]
    elif mode not in ("all", "correct"):
        raise ValueError(f"teacher.rationales: unknown mode {mode!r}")
    for t, ok, truncated in zip(texts, correct, cut):
        if truncated:
            s.dropped_truncated += 1
        elif not t:
            s.dropped_empty += 1
        elif mode == "correct" and not ok:
            s.dropped_wrong_answer += 1
        else:
            s.kept.append(t)
    return s


COUNT_KEYS = ("dropped_empty", "dropped_wrong_answer", "dropped_not_first", "dropped_truncated")


def filter_questions(
    questions: list[Question], mode: str, extractor: Any, keep_truncated: bool = False
) -> tuple[list[tuple[Question, list[str]]], dict[str, Any]]:
    """Kept rationales per question (a question left with none is dropped, its id listed) and
    the counts: ``rationales == kept + dropped_empty + dropped_wrong_answer + dropped_not_first
    + dropped_truncated``."""
    c: dict[str, Any] = {"questions": len(questions), "rationales": 0, "kept": 0, **dict.fromkeys(COUNT_KEYS, 0),
                         "questions_kept": 0, "questions_dropped": 0, "teacher_first_sample_accuracy": None,
                         "dropped_ids": []}
    out = []
    first_ok = 0
    for q in questions:
        s = select(q, mode, extractor, keep_truncated)
        c["rationales"] += len(q.replies)
        c["kept"] += len(s.kept)
        for k in COUNT_KEYS:
            c[k] += getattr(s, k)
        first_ok += bool(s.correct and s.correct[0])
        if s.kept:
            out.append((q, s.kept))
            c["questions_kept"] += 1
        else:
            c["questions_dropped"] += 1
            c["dropped_ids"].append(q.sample_id)
    if questions:
        c["teacher_first_sample_accuracy"] = round(first_ok / len(questions), 4)
    return out, c
