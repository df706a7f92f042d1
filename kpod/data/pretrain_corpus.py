"""Pre-training corpus for the offline tiny student: general text, never the distillation data.

The paper's students (LLaMA-7B, FlanT5) arrive knowing language and arithmetic; a tiny student
built from a config knows nothing and has to learn both from the distillation set, which is not
the regime KPOD is about (docs/method.md, "offline testbed"). This corpus gives the tiny student a
comparable starting point. It holds three kinds of sentences, shuffled into short documents:

* **arithmetic facts** over the built-in task's number range, in several surface forms
  (``17 + 5 = 22``, ``17 plus 5 is 22``, ``half of 18 is 9``, ``twice 7 is 14``);
* **plain sentences about quantities** (``There are 14 stickers in the box.``, ``Mia counts 9
  coins.``) and **everyday action sentences** with the words explanations use (``We take away the
  9 cards from the box.``, ``Now we can say that we read the note.``), one quantity or one action
  each, never a calculation or a chain;
* **generic sentences** with the words a teacher's explanations use ("we", "so", "then",
  "simply", "answer", "step", ...), none of them a rationale.

What it never contains: a word problem, a multi-step calculation, a rationale or the answer
sentence "Therefore, the answer is ..." of the training template. So the distillation data stays
the only place where the student sees how a question maps to a chain of steps.

**The ``rationale_style`` corpus** (``student.pretrain.corpus: rationale_style``, the "fluent
base") adds a fourth kind: single rationale step sentences in the built-in generator's own frames
— its filler openers, its action phrases and units, its ``so 12 + 7 = 19 stickers.`` shape — about
random quantities, each self-contained and arithmetically correct (``Okay, let us just simply add
the 7 new stickers, so 12 + 7 = 19 stickers.``). A student pre-trained on it already speaks the
rationales' language and computes single steps; what distillation still has to teach is reading
the question and chaining the steps, which is where the keypoints are. Every step sentence of a
document is about another item, so no two of them form a chain; there is still no question and no
answer sentence (tests/models/test_pretrain.py checks both against generated data).
"""

from __future__ import annotations

import random

from kpod.data.synthetic import FILLERS, ITEMS, NAMES, choose_op, step_action

#: bump when the generator's output changes: it is part of the pre-trained base's cache key
CORPUS_VERSION = 2

CORPORA = ("arith_facts", "rationale_style")

CONTAINERS = ["box", "bag", "jar", "basket", "drawer", "shelf", "bowl", "room"]
VERBS = ["counts", "sees", "finds", "keeps", "wants", "sorts", "draws", "packs"]
GENERIC = [
    "We can think about this one step at a time.",
    "Let us look at the numbers first.",
    "It is easy to see why this works.",
    "She reads the question again and smiles.",
    "They write the result on the board.",
    "Then we just need to check the sum.",
    "So we simply add the two numbers together.",
    "Now we can say what the total is.",
    "Okay, the teacher asks for the answer.",
    "Well, he basically got it right.",
    "Next, the class adds up all of the points.",
    "First, we need to find the total.",
    "The answer is a whole number.",
    "Every step of the plan is written down.",
    "Think about what happens when you take some away.",
    "If you split a group in half, each part is the same size.",
    "When you buy more, you have more than before.",
    "When you give some away, you have fewer than before.",
    "Three times as many means the amount is tripled.",
    "Twice as many means the amount is doubled.",
    "How many are there now? Let us count.",
    "Quick brown foxes jump over the lazy dog.",
    "Zebras, yaks and quails live at the zoo.",
    "Vivid jugglers excite the fine crowd.",
]


def _fact(rng: random.Random, max_value: int, max_operand: int) -> str:
    """One arithmetic fact in one of several surface forms."""
    op = rng.choice(["add", "add", "sub", "sub", "mul", "half"])
    if op == "add":
        a = rng.randint(0, max_value)
        b = rng.randint(1, max_operand)
        forms = [f"{a} + {b} = {a + b}", f"{a} plus {b} is {a + b}", f"Adding {b} to {a} gives {a + b}"]
    elif op == "sub":
        b = rng.randint(1, max_operand)
        a = rng.randint(b, max_value + b)
        forms = [f"{a} - {b} = {a - b}", f"{a} minus {b} is {a - b}", f"Taking {b} from {a} leaves {a - b}"]
    elif op == "mul":
        k = rng.choice([2, 2, 3])
        a = rng.randint(0, max(1, max_value // k))
        word = "twice" if k == 2 else "three times"
        forms = [f"{a} * {k} = {a * k}", f"{word.capitalize()} {a} is {a * k}", f"{a} times {k} is {a * k}"]
    else:
        a = 2 * rng.randint(1, max(1, max_value // 2))
        forms = [f"{a} / 2 = {a // 2}", f"Half of {a} is {a // 2}", f"{a} divided by 2 is {a // 2}"]
    # the symbolic form (the one rationales use) half of the time, a worded form otherwise
    return (forms[0] if rng.random() < 0.5 else rng.choice(forms[1:])) + "."


OPENERS = ["Next, we just need to simply", "Now we can say that we", "So, as we got it, we just",
           "Okay, let us just simply", "Then we can basically just", "Well, now we simply", "First, we",
           "Then we", "After that, we", "Now we"]
ENDINGS = ["count them again", "put them on the shelf", "write it down", "check the list", "look at the box",
           "keep going", "wait for the others", "read the note", "tidy the room", "share the snacks"]


def _action(rng: random.Random, max_value: int, max_operand: int) -> str:
    """Everyday sentences with the words explanations use, one action each and never a
    calculation: ``We take away the 9 cards from the box.``, ``Now we can say that we read the note.``"""
    name, item, box = rng.choice(NAMES), rng.choice(ITEMS), rng.choice(CONTAINERS)
    k = rng.randint(1, max_operand)
    forms = [
        f"We add the {k} new {item} to the {box}.",
        f"{name} adds the {k} new {item} to the {box}.",
        f"We take away the {k} {item} from the {box}.",
        f"{name} takes away the {k} {item}.",
        f"We split the {item} in half.",
        f"They find twice as many {item} in the {box}.",
        f"We find three times as many {item} as before.",
        f"{name} buys {k} more {item}.",
        f"{name} gives {k} {item} to {rng.choice(NAMES)}.",
        f"{name} loses {k} {item}.",
        f"{rng.choice(OPENERS)} {rng.choice(ENDINGS)}.",
        f"{rng.choice(OPENERS)} {rng.choice(ENDINGS)}, so the {item} stay in the {box}.",
    ]
    return rng.choice(forms)


def _quantity(rng: random.Random, max_value: int) -> str:
    """One plain sentence about one quantity (no operation, no question)."""
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    n = rng.randint(1, max_value)
    forms = [
        f"There are {n} {item} in the {rng.choice(CONTAINERS)}.",
        f"{name} {rng.choice(VERBS)} {n} {item}.",
        f"{name} has {n} {item} in a {rng.choice(CONTAINERS)}.",
        f"The {rng.choice(CONTAINERS)} holds {n} {item}.",
    ]
    return rng.choice(forms)


def _step_sentence(rng: random.Random, item: str, max_value: int, max_operand: int) -> str:
    """One rationale step in the generator's frame, about a random quantity of ``item``: a filler
    opener half of the time (the generator's ``filler_prob``), else ``First, we`` / ``Then we``."""
    value = rng.randint(3, max_value)
    op, k = choose_op(rng, value, max_value, max_operand)
    action, sym, new = step_action(op, k, value, item)
    lead = rng.choice(FILLERS) if rng.random() < 0.5 else rng.choice(["First, we", "Then we"])
    return f"{lead} {action}, so {value} {sym} {k} = {new} {item}."


def pretraining_texts(
    n_docs: int, *, seed: int, max_value: int = 80, max_operand: int = 12, sentences: tuple[int, int] = (4, 8),
    corpus: str = "arith_facts",
) -> list[str]:
    """``n_docs`` short documents of shuffled facts, quantity sentences and generic sentences
    (``corpus="rationale_style"``: and single rationale step sentences, about a third of them).

    Deterministic for a seed. ``max_value``/``max_operand`` bound the numbers in the facts; the
    defaults cover the built-in task's range (its values stay <= 60) with some room.
    """
    if corpus not in CORPORA:
        raise ValueError(f"student.pretrain.corpus: {corpus!r} is not one of {', '.join(CORPORA)}")
    rng = random.Random(seed)
    docs = []
    for _ in range(n_docs):
        parts = []
        # one item per step sentence of the document: two steps about one item could read as a chain
        items = rng.sample(ITEMS, len(ITEMS)) if corpus == "rationale_style" else []
        for _ in range(rng.randint(*sentences)):
            if corpus == "rationale_style" and rng.random() < 0.35:
                parts.append(_step_sentence(rng, items.pop(), max_value, max_operand))
                continue
            kind = rng.random()
            if kind < 0.5:
                parts.append(_fact(rng, max_value, max_operand))
            elif kind < 0.65:
                parts.append(_quantity(rng, max_value))
            elif kind < 0.9:
                parts.append(_action(rng, max_value, max_operand))
            else:
                parts.append(rng.choice(GENERIC))
        docs.append(" ".join(parts))
    return docs
