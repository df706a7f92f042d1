"""The one prompt template shared by training and evaluation.

Training serialisation (``use_rationale: true``)::

    Q: {question} A: {trigger} {rationale} Therefore, the answer is {answer}

Evaluation feeds :meth:`PromptTemplate.prompt` (``Q: {question} A: {trigger}``) and the
student generates the rest. At stage ``c`` of the progressive curriculum the first ``c`` steps
move into the input; :meth:`Serialized.cut` gives the character position where the target starts.

A data format may override the template per record (:data:`kpod.data.records.TEMPLATE_OVERRIDES`):
``meta["trigger"]`` replaces the trigger (``""``: none, e.g. an answer-only example) and
``meta["demos"]`` is text put before ``Q:`` (in-context demonstrations; input, never target).
A record without them is rendered exactly as before.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from kpod.data.records import Record, Span, template_overrides


@dataclass(frozen=True)
class Serialized:
    """A record rendered with the template; all spans are absolute character offsets."""

    text: str
    prefix_end: int  # end of "Q: ... A: {trigger}" (the inference prefix)
    steps: tuple[Span, ...]  # rationale steps inside ``text``
    answer_span: Span  # the answer sentence inside ``text``
    rationale_start: int  # where the rationale begins in ``text``

    def cut(self, given_steps: int) -> int:
        """Character position where the target begins when ``given_steps`` steps are input."""
        if given_steps < 0:
            raise ValueError(f"given_steps must be >= 0, got {given_steps}")
        if given_steps == 0:
            return self.steps[0][0] if self.steps else self.answer_span[0]
        if given_steps >= len(self.steps):
            return self.answer_span[0]
        return self.steps[given_steps][0]


@dataclass(frozen=True)
class PromptTemplate:
    question_prefix: str = "Q: "
    answer_prefix: str = " A:"
    trigger: str = "Let's think step by step."
    answer_sentence: str = "Therefore, the answer is {answer}"
    use_rationale: bool = True

    @classmethod
    def from_config(cls, cfg: Any) -> PromptTemplate:
        """The template a recipe's ``data.template`` section describes (its fields are these)."""
        return cls(**{f.name: getattr(cfg, f.name) for f in fields(cls)})

    def inference_prefix(self, question: str, trigger: str | None = None, demos: str = "") -> str:
        """``{demos}Q: {question} A: {trigger}``; ``trigger=None``: the template's own."""
        trigger = self.trigger if trigger is None else trigger
        head = f"{demos}{self.question_prefix}{question.strip()}{self.answer_prefix}"
        return f"{head} {trigger}" if trigger else head

    def prompt(self, record: Record) -> str:
        """The record's inference prefix, with its per-record overrides (what evaluation feeds)."""
        return self.inference_prefix(record.question, **template_overrides(record))

    def render_answer(self, answer: str) -> str:
        return self.answer_sentence.format(answer=answer)

    def serialize(self, record: Record) -> Serialized:
        prefix = self.prompt(record)
        text = prefix
        steps: tuple[Span, ...] = ()
        rationale_start = len(text) + 1
        if self.use_rationale and record.rationale:
            text = f"{text} {record.rationale}"
            steps = tuple((s + rationale_start, e + rationale_start) for s, e in record.steps)
        answer = self.render_answer(record.answer)
        answer_start = len(text) + 1
        text = f"{text} {answer}"
        return Serialized(
            text=text,
            prefix_end=len(prefix),
            steps=steps,
            answer_span=(answer_start, len(text)),
            rationale_start=rationale_start,
        )
