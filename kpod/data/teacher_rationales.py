"""The built-in task's training split on a teacher's rationales: ``arith``'s ``teacher_rationales``.

``kpod teach`` writes ``OUT/train.json`` (the MCC-KD format, one row per question with its kept
rationales: ``{id, instruction, output: [texts], label}``). Each row's ``id`` is the question's
sample_id; its rationales replace the generator's gold rationale, matched by that id, never by
position. The teacher's text ends with the answer sentence the template adds itself ("Therefore,
the answer is N"): it is cut off, and what is left is split into steps like any benchmark's
rationale. The generator's side data (keypoint and filler spans) describes its own text, so the
replaced records do not carry it (``oracle`` weighting and the keypoint AUC need the gold text).
Questions the teacher kept no rationale for are dropped and counted; a row whose question or
answer differs from the generator's is an error naming the file and row.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from kpod.data.records import DataError, Record
from kpod.data.steps import split_steps

# the default template's answer sentence at the end of a reply (kpod/data/template.py)
ANSWER_SENTENCE = re.compile(r"\s*Therefore, the answer is\s*[^\s]*\s*$")


def rationale_text(reply: str) -> str:
    """A teacher reply without its closing answer sentence."""
    return ANSWER_SENTENCE.sub("", reply).strip()


def with_teacher_rationales(train: list[Record], rows: Iterable[tuple[int, str, dict[str, Any]]],
                            step_mode: str) -> tuple[list[Record], dict[str, Any]]:
    """``train`` with each question's rationale replaced by the teacher's, from the teach output's
    ``rows`` (``(number, "file:line", row)``, as :func:`kpod.data.sources.iter_rows` reads them): one
    record per kept rationale, ``<id>`` for one, ``<id>#k`` for several, question_id ``<id>``; the counts."""
    by_id = {r.sample_id: r for r in train}
    out: list[Record] = []
    seen: set[str] = set()
    counts = {"questions": len(train), "rows": 0, "rationales": 0, "questions_without_rationale": 0}
    for _, where, row in rows:
        counts["rows"] += 1
        sid = row.get("id")
        gold = by_id.get(sid) if isinstance(sid, str) else None
        if gold is None:
            raise DataError(f"{where}: data.source.params.teacher_rationales: id {sid!r} is not a training question "
                            "of this source (a kpod teach output of another data set or of other params?)")
        if sid in seen:
            raise DataError(f"{where}: data.source.params.teacher_rationales: id {sid!r} appears twice")
        seen.add(sid)
        if str(row.get("instruction", "")).strip() != gold.question or str(row.get("label", "")).strip() != gold.answer:
            raise DataError(f"{where}: data.source.params.teacher_rationales: the question or answer of {sid!r} "
                            "differs from the generator's")
        output = row.get("output", [])
        texts = [rationale_text(t) for t in (output if isinstance(output, list) else [output]) if isinstance(t, str)]
        texts = [t for t in texts if t]
        for k, text in enumerate(texts):
            rationale, steps = split_steps(text, step_mode)
            rid = sid if len(texts) == 1 else f"{sid}#{k}"
            out.append(Record(rid, gold.question, rationale, steps, gold.answer, {"teacher_rationale": True}, sid))
        counts["rationales"] += len(texts)
    counts["questions_without_rationale"] = len(train) - len({r.question_id for r in out})
    return out, counts
