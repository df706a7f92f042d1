"""Several rationales per ``arith`` question (``rationales_per_question``), for the methods that
train on many rationales of one question (MCC-KD, SCoTD).

**Synthetic, not sampled from a teacher.** The extra rationales are rewritten from the original
one's calculations (``meta["keypoint_spans"]``) in other sentence frames: the plain frame of the
generator, "start with … and …", result-first ("that leaves …, since …") and a terse one, with
the generator's filler phrases at ``filler_prob``. They differ in wording and in where the
calculation sits in the step, not in the order of the calculations (a chain of dependent
operations has one order). With ``wrong_rationale_rate`` an extra rationale slips by a small
amount at one step and carries the wrong value to the end, so its final answer is wrong
(``meta["teacher_answer"]``): what a correctness filter should drop. Every extra rationale is
drawn from its own RNG (seeded by the data seed, the sample_id and its index), so the questions,
the original rationales and their order are exactly those of ``rationales_per_question: 1``.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import replace

from kpod.data.records import Record
from kpod.data.synthetic import FILLERS, RationaleBuilder

_CALC = re.compile(r"^(\d+) ([-+*/]) (\d+) = (\d+)$")
_ITEM = re.compile(r"How many (\w+) does \w+ have now\?$")
_APPLY = {"+": lambda v, k: v + k, "-": lambda v, k: v - k, "*": lambda v, k: v * k, "/": lambda v, k: v // k}
_VERB = {"+": "add {k}", "-": "take away {k}", "*": "multiply by {k}", "/": "halve it"}


def _frame(style: int, i: int, calc: str, value: int, sym: str, k: int, new: int, item: str) -> tuple[str, str, str]:
    """One step of rationale ``style`` (1: start-with, 2: result-first, 3: terse): (lead, calc, tail)."""
    if style == 1:
        verb = _VERB[sym].format(k=k)
        return f"{'Start' if i == 0 else 'Continue'} with {value} {item} and {verb}: ", calc, f" {item}."
    if style == 2:
        return f"{'That gives' if i == 0 else 'That leaves'} {new} {item}, since ", calc, "."
    return f"Step {i + 1}: ", calc, "."


def _rewrite(record: Record, r: int, seed: int, filler_prob: float, wrong_rate: float) -> Record:
    """Rationale ``r`` (≥ 1) of ``record``: another frame, maybe a slip (a wrong final answer)."""
    h = hashlib.sha256(f"{seed}\x1f{record.sample_id}\x1f{r}".encode()).digest()
    rng = random.Random(int.from_bytes(h[:8], "big"))
    calcs = []
    for s, e in record.meta["keypoint_spans"]:
        m = _CALC.match(record.rationale[s:e])
        if m is None:
            raise ValueError(f"{record.sample_id}: cannot read the calculation {record.rationale[s:e]!r}")
        calcs.append((int(m.group(1)), m.group(2), int(m.group(3))))
    item_m = _ITEM.search(record.question)
    item = item_m.group(1) if item_m else "items"
    slip_at = rng.randrange(len(calcs)) if rng.random() < wrong_rate else None
    style = 1 + (r - 1) % 3
    b = RationaleBuilder()
    value = calcs[0][0]
    for i, (_, sym, k) in enumerate(calcs):
        new = _APPLY[sym](value, k)
        if i == slip_at:
            new += rng.choice([-2, -1, 1, 2]) if new > 2 else rng.choice([1, 2])
        lead, calc, tail = _frame(style, i, f"{value} {sym} {k} = {new}", value, sym, k, new, item)
        b.begin_step()
        if rng.random() < filler_prob:  # "Okay, let us just simply start with ..."
            b.add(rng.choice(FILLERS), "filler")
            lead = " " + lead[0].lower() + lead[1:]
        b.add(lead)
        b.add(calc, "calc")
        b.add(tail)
        b.end_step()
        value = new
    meta = {**record.meta, "keypoint_spans": b.keypoints, "filler_spans": b.fillers, "teacher_answer": str(value),
            "rationale_style": style}
    return replace(record, sample_id=f"{record.sample_id}#{r}", rationale=b.text, steps=tuple(b.steps), meta=meta,
                   question_id=record.sample_id)


def with_rationales(
    records: list[Record], per_question: int, seed: int, filler_prob: float, wrong_rate: float
) -> list[Record]:
    """``per_question`` rationales of each question: ``<id>#0`` the original, ``<id>#1…`` rewrites;
    all share ``question_id = <id>``. Texts of one question are distinct (redrawn, else an error)."""
    out: list[Record] = []
    for rec in records:
        original = replace(rec, sample_id=f"{rec.sample_id}#0", question_id=rec.sample_id,
                           meta={**rec.meta, "teacher_answer": rec.answer, "rationale_style": 0})
        group, seen = [original], {rec.rationale}
        for r in range(1, per_question):
            for attempt in range(20):
                alt = _rewrite(rec, r + attempt * per_question, seed, filler_prob, wrong_rate)
                if alt.rationale not in seen:
                    break
            else:
                raise ValueError(f"{rec.sample_id}: could not draw {per_question} distinct rationales")
            seen.add(alt.rationale)
            group.append(replace(alt, sample_id=f"{rec.sample_id}#{r}"))
        out += group
    return out
