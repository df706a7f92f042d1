"""Built-in offline data set: seeded multi-step arithmetic word problems with teacher-like CoT.

Each problem tracks one quantity through a chain of operations (add, take away, double/triple,
halve). The rationale has one calculation per step, phrased in natural sentences, and is mixed
with filler phrasing that carries no information ("Next, we just need to simply ..."), the way a
chatty teacher LLM writes. For every rationale the generator records which character spans are
calculation tokens (numbers, operators, ``=``) and which are filler, in ``Record.meta``
(``keypoint_spans``, ``filler_spans``), so the keypoint-weighting work can be scored.

Splits: ``train``/``validation``/``test`` draw ``min_steps..max_steps`` operations; ``ood`` draws
``ood_min_steps..ood_max_steps`` (longer chains than any seen in training). Questions are unique
across all splits.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from kpod.data.records import Record, Span

NAMES = [
    "Tom", "Anna", "Ben", "Lily", "Sam", "Mia", "Jack", "Emma", "Leo", "Zoe", "Max", "Ella",
    "Noah", "Ava", "Owen", "Ruby", "Finn", "Nora", "Luke", "Ivy",
]  # fmt: skip
ITEMS = [
    "apples", "marbles", "stickers", "cookies", "books", "coins", "pencils", "cards", "shells",
    "stamps", "eggs", "candies", "toys", "flowers", "balloons", "rocks",
]  # fmt: skip
FILLERS = [
    "Next, we just need to simply",
    "Now we can say that we",
    "So, as we got it, we just",
    "Okay, let us just simply",
    "Then we can basically just",
    "Well, now we simply",
]


@dataclass
class RationaleBuilder:
    """Accumulates rationale text while recording keypoint / filler character spans."""

    text: str = ""
    keypoints: list[Span] = field(default_factory=list)
    fillers: list[Span] = field(default_factory=list)
    steps: list[Span] = field(default_factory=list)
    _step_start: int = 0

    def begin_step(self) -> None:
        if self.text:
            self.text += " "
        self._step_start = len(self.text)

    def add(self, piece: str, kind: str | None = None) -> None:
        start = len(self.text)
        self.text += piece
        if kind == "calc":
            self.keypoints.append((start, len(self.text)))
        elif kind == "filler":
            self.fillers.append((start, len(self.text)))

    def end_step(self) -> None:
        self.steps.append((self._step_start, len(self.text)))


def _pronoun(name: str) -> str:
    return "she" if name in {"Anna", "Lily", "Mia", "Emma", "Zoe", "Ella", "Ava", "Ruby", "Nora", "Ivy"} else "he"


def choose_op(rng: random.Random, value: int, max_value: int, max_operand: int) -> tuple[str, int]:
    """The next operation on ``value`` and its operand, kept inside ``[1, max_value]``."""
    ops = ["add", "sub"]
    if value * 2 <= max_value and value <= 20:
        ops.append("mul")
    if value % 2 == 0 and value >= 4:
        ops.append("half")
    op = rng.choice(ops)
    if op == "add":
        k = rng.randint(2, max(2, min(max_operand, max_value - value)))
        return ("add", k) if value + k <= max_value else ("sub", rng.randint(1, min(max_operand, value - 1)))
    if op == "sub":
        if value <= 2:
            return "add", rng.randint(2, max_operand)
        return "sub", rng.randint(1, min(max_operand, value - 1))
    if op == "mul":
        factor = 3 if value * 3 <= max_value and rng.random() < 0.4 else 2
        return "mul", factor
    return "half", 2


def step_action(op: str, k: int, value: int, item: str) -> tuple[str, str, int]:
    """A rationale step's action phrase, operator symbol and result: ``("add the 7 new stickers",
    "+", value + 7)`` (the pre-training corpus's ``rationale_style`` sentences use it too)."""
    if op == "add":
        return f"add the {k} new {item}", "+", value + k
    if op == "sub":
        return f"take away the {k} {item}", "-", value - k
    if op == "mul":
        return f"find {'twice' if k == 2 else 'three times'} as many {item}", "*", value * k
    return f"split the {item} in half", "/", value // 2


def generate_problem(
    rng: random.Random,
    n_ops: int,
    *,
    max_value: int = 60,
    max_operand: int = 12,
    filler_prob: float = 0.5,
) -> tuple[str, str, list[Span], list[Span], list[Span], str]:
    """One problem: (question, rationale, step spans, keypoint spans, filler spans, answer)."""
    name = rng.choice(NAMES)
    other = rng.choice([n for n in NAMES if n != name])
    item = rng.choice(ITEMS)
    pro = _pronoun(name)
    value = rng.randint(3, min(20, max_value))
    q_parts = [f"{name} has {value} {item}."]
    b = RationaleBuilder()
    for i in range(n_ops):
        op, k = choose_op(rng, value, max_value, max_operand)
        action, sym, new = step_action(op, k, value, item)
        if op == "add":
            event = rng.choice([f"{pro.capitalize()} buys {k} more {item}.", f"{other} gives {name} {k} {item}."])
        elif op == "sub":
            event = rng.choice([f"{pro.capitalize()} gives {k} {item} to {other}.", f"{pro.capitalize()} loses {k} {item}."])
        elif op == "mul":
            event = f"Then {pro} has {'twice' if k == 2 else 'three times'} as many {item} as before."
        else:
            event = f"{pro.capitalize()} gives half of the {item} to {other}."
        q_parts.append(event)
        b.begin_step()
        if rng.random() < filler_prob:
            b.add(rng.choice(FILLERS), "filler")
            b.add(f" {action}, so ")
        else:
            lead = "First, we" if i == 0 else "Then we"
            b.add(f"{lead} {action}, so ")
        b.add(f"{value} {sym} {k} = {new}", "calc")
        b.add(f" {item}.")
        b.end_step()
        value = new
    q_parts.append(f"How many {item} does {name} have now?")
    return " ".join(q_parts), b.text, b.steps, b.keypoints, b.fillers, str(value)


SPLITS = ("train", "validation", "test", "ood")


def generate_splits(
    *,
    seed: int,
    sizes: dict[str, int],
    min_steps: int,
    max_steps: int,
    ood_min_steps: int,
    ood_max_steps: int,
    max_value: int,
    max_operand: int,
    filler_prob: float,
    prefix: str = "arith",
) -> dict[str, list[Record]]:
    """Generate every split; questions are unique across splits (duplicates are redrawn)."""
    rng = random.Random(seed)
    seen: set[str] = set()
    out: dict[str, list[Record]] = {}
    for split in SPLITS:
        lo, hi = (ood_min_steps, ood_max_steps) if split == "ood" else (min_steps, max_steps)
        records: list[Record] = []
        attempts = 0
        while len(records) < sizes.get(split, 0):
            attempts += 1
            if attempts > 50 * max(1, sizes[split]) + 1000:
                raise ValueError(
                    f"could not draw {sizes[split]} unique {split} problems; widen max_value or lower the size"
                )
            n_ops = rng.randint(lo, hi)
            q, rat, steps, keys, fills, ans = generate_problem(
                rng, n_ops, max_value=max_value, max_operand=max_operand, filler_prob=filler_prob
            )
            if q in seen:
                continue
            seen.add(q)
            records.append(
                Record(
                    sample_id=f"{prefix}/{split}/{len(records):05d}",
                    question=q,
                    rationale=rat,
                    steps=tuple(steps),
                    answer=ans,
                    meta={"keypoint_spans": keys, "filler_spans": fills, "n_ops": n_ops},
                )
            )
        out[split] = records
    return out
