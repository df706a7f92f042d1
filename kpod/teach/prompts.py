"""Teacher prompts: chat messages for a question, their plain-text form, and cache keys.

A cache key is the SHA-256 of the canonical JSON (sorted keys, no spaces) of exactly what
determines a reply: the request the teacher sees (messages, or the rendered text for a local
model), the teacher (backend + model), the sampling parameters and the sample index. The
sample_id is *not* part of it, so the same question under another id prefix reuses the reply.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kpod.data.records import DataError
from kpod.teacher_config import FewShotExample, TeacherConfig

Message = dict[str, str]


@dataclass(frozen=True)
class Sampling:
    temperature: float
    top_p: float
    max_tokens: int

    def as_dict(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "top_p": self.top_p, "max_tokens": self.max_tokens}


def render_prompt(template: str, question: str, answer: str | None = None) -> str:
    """``template`` with ``{question}`` replaced, and ``{answer}`` when an answer is given (an
    answer-conditioned prompt; other braces are left alone)."""
    text = template.replace("{question}", question.strip())
    return text if answer is None else text.replace("{answer}", answer.strip())


def load_few_shot(cfg: TeacherConfig) -> list[FewShotExample]:
    """The worked examples of ``teacher.few_shot`` or ``teacher.few_shot_file``."""
    if cfg.few_shot_file is None:
        return list(cfg.few_shot)
    from pydantic import ValidationError

    from kpod.data.sources import read_rows

    out = []
    for where, row in read_rows(Path(cfg.few_shot_file)):
        try:
            out.append(FewShotExample.model_validate(row))
        except ValidationError as e:
            first = e.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or "(row)"
            raise DataError(f"{where}: teacher.few_shot_file: {field}: {first['msg']}") from None
    if not out:
        raise DataError(f"{cfg.few_shot_file}: teacher.few_shot_file holds no examples")
    return out


def build_messages(
    cfg: TeacherConfig, shots: list[FewShotExample], question: str, answer: str | None = None
) -> list[Message]:
    """System message (if any), one user/assistant pair per example, then the question. With
    ``answer`` (contrastive decoding) the prompt states it, the examples' prompts their own."""
    msgs: list[Message] = []
    if cfg.system:
        msgs.append({"role": "system", "content": cfg.system})
    for s in shots:
        shown = None if answer is None else s.answer
        msgs.append({"role": "user", "content": render_prompt(cfg.prompt, s.question, shown)})
        reply = cfg.few_shot_answer.replace("{rationale}", s.rationale.strip()).replace("{answer}", s.answer.strip())
        msgs.append({"role": "assistant", "content": reply})
    msgs.append({"role": "user", "content": render_prompt(cfg.prompt, question, answer)})
    return msgs


def plain_text(messages: list[Message]) -> str:
    """Messages as one text for a model without a chat template: turns separated by a blank
    line, each reply right after its prompt, ending with the question's prompt. No trailing
    space: BPE tokenizers attach a word's space to the word, so a prompt ending in a lone space
    token is one the model has rarely seen (it continues with " First", not "First")."""
    parts: list[str] = []
    for m in messages:
        if m["role"] == "assistant" and parts:
            parts[-1] = f"{parts[-1]} {m['content']}"
        else:
            parts.append(m["content"])
    return "\n\n".join(parts)


def cache_key(request: Any, teacher: dict[str, Any], sampling: Sampling, index: int) -> str:
    doc = {"request": request, "teacher": teacher, "sampling": sampling.as_dict(), "index": index}
    canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()
