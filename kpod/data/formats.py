"""Training-set expansions of the Table 1 baselines: Record → Records, pure and deterministic.

Every derived record keeps a stable id built from its source id (``<sample_id>#label``,
``<sample_id>#r3``, ``<sample_id>#cf``), never from load order, and names its question in
``Record.question_id`` (the source record's). ``meta["task"]`` / ``meta["format"]`` say what the
record is for (the collator hands ``meta["task"]`` to the losses per sample_id); per-record
template overrides are ``meta["trigger"]`` / ``meta["demos"]`` (kpod/data/template.py).
Definitions and deviations: docs/baselines.md.

* :func:`dsbs_tasks` — distilling step-by-step: a label task and a rationale task per question.
* :func:`specialized_kd_formats` — Fu et al.: in-context / zero-shot × CoT / answer-only.
* :func:`select_diverse` / :func:`mcc_kd_records` — MCC-KD: diverse correct rationales.
* :func:`keep_all_samples` — SCoTD: all N sampled rationales of a question.
* :func:`perturb_answer`, :func:`counterfactual_record`, :func:`answer_edited_rationale`,
  :func:`teacher_counterfactual_records` — SCOTT.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from itertools import combinations

from kpod.data.records import TEACHER_KEY, DataError, Record, Span

__all__ = [
    "COUNTERFACTUAL_ID_SUFFIX",
    "DSBS_PREFIXES",
    "SCOTT_PREFIXES",
    "SKD_FORMATS",
    "Sample",
    "answer_edited_rationale",
    "counterfactual_record",
    "dsbs_tasks",
    "factual_record",
    "jaccard",
    "keep_all_samples",
    "mcc_kd_records",
    "ngrams",
    "perturb_answer",
    "question_id",
    "select_diverse",
    "specialized_kd_formats",
    "teacher_counterfactual_records",
    "with_prefix",
]

DSBS_PREFIXES = {"label": "predict: ", "rationale": "explain: "}  # the released code's prefixes
SCOTT_PREFIXES = {"factual": "[factual] ", "counterfactual": "[counterfactual] "}
# id of a teacher's counterfactual rationale row: the question's sample_id + this (kpod teach
# writes it, the scott format's ``counterfactual: teacher`` reads it back by question)
COUNTERFACTUAL_ID_SUFFIX = "#counterfactual"
SKD_FORMATS = ("in_context_cot", "zero_shot_cot", "in_context_answer_only", "zero_shot_answer_only")


def question_id(record: Record) -> str:
    """The record's question (``Record.question_id``; its own sample_id unless the source set one)."""
    return record.question_id


def _derive(record: Record, suffix: str, **changes: object) -> Record:
    meta = {**record.meta, "source_id": record.sample_id}
    meta.update(changes.pop("meta", {}))  # type: ignore[arg-type]
    return replace(record, sample_id=f"{record.sample_id}#{suffix}", meta=meta,  # type: ignore[arg-type]
                   question_id=record.question_id, **changes)


def _unit(seed: int, *key: str) -> float:
    """A deterministic number in [0, 1) from the seed and string keys (no global RNG state)."""
    h = hashlib.sha256("\x1f".join((str(seed), *key)).encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def with_prefix(record: Record, prefix: str, **meta: object) -> Record:
    """The same record (same sample_id) with a task prefix on the question and ``meta`` added
    (a new dict: the source record is not changed): for evaluation splits of DSbS (``predict: ``)
    and SCOTT (``[factual] ``), whose predictions keep their ids."""
    return replace(record, question=f"{prefix}{record.question}", meta={**record.meta, **meta})


# ------------------------------------------------------------------------------- DSbS


def dsbs_tasks(record: Record, prefixes: Mapping[str, str] = DSBS_PREFIXES) -> list[Record]:
    """``<id>#label`` (``predict: `` question → answer sentence, no rationale) and
    ``<id>#rationale`` (``explain: `` question → rationale), ``meta["task"]`` naming each, no
    trigger (the release's prompts have none). The task weights are the ``dsbs`` loss's; it also
    leaves the rationale task's answer sentence out (the paper's target is the rationale alone)."""
    label = _derive(record, "label", question=f"{prefixes['label']}{record.question}", rationale="",
                    steps=(), meta={"task": "label", "trigger": ""})
    rationale = _derive(record, "rationale", question=f"{prefixes['rationale']}{record.question}",
                        meta={"task": "rationale", "trigger": ""})
    return [label, rationale]


# ------------------------------------------------------------------------------- Specialized KD


def _demo(r: Record, cot: bool, answer_sentence: str) -> str:
    body = f"{r.rationale} " if cot and r.rationale else ""
    return f"Q: {r.question}\nA: {body}{answer_sentence.format(answer=r.answer)}\n\n"


def specialized_kd_formats(
    records: Sequence[Record],
    ratio: Mapping[str, float] | None = None,
    seed: int = 0,
    n_demos: int = 4,
    answer_sentence: str = "Therefore, the answer is {answer}",
) -> list[Record]:
    """Fu et al.'s four formats of every (question, teacher rationale) record.

    CoT formats keep every record of a question; answer-only formats one per question (the first
    by sample_id), as in the released data builder. In-context formats carry ``n_demos``
    demonstrations (4 in the release) in ``meta["demos"]`` (the template puts them before
    ``Q:``), drawn, seeded per record, from *other* questions' records, rendered CoT or
    answer-only like the target. Answer-only records have no rationale and ``meta["trigger"] = ""``
    (no "Let's think step by step"). ``ratio[format]`` ∈ [0, 1] keeps exactly
    ``round(ratio·n)`` of the format's ``n`` candidate records: those with the smallest seeded
    hash of their id (deterministic, independent of input order); ``None`` keeps all (the
    release's union of the four sets). ``meta["teacher_key"]``: the source record's sample_id for
    CoT formats (a stored teacher distribution over the same rationale), None for answer-only."""
    ratio = {f: 1.0 for f in SKD_FORMATS} if ratio is None else dict(ratio)
    unknown = sorted(set(ratio) - set(SKD_FORMATS))
    if unknown or any(not 0.0 <= v <= 1.0 for v in ratio.values()):
        raise ValueError(f"specialized_kd.ratio: formats {list(SKD_FORMATS)} with values in [0, 1]; got {ratio}")
    ordered = sorted(records, key=lambda r: r.sample_id)
    first_of_question: dict[str, Record] = {}
    for r in ordered:
        first_of_question.setdefault(question_id(r), r)
    out: list[Record] = []
    for fmt in SKD_FORMATS:
        cot, in_context = fmt.endswith("_cot"), fmt.startswith("in_context")
        pool = ordered if cot else list(first_of_question.values())
        n_keep = round(ratio.get(fmt, 0.0) * len(pool))
        keep = {r.sample_id for r in sorted(pool, key=lambda r: (_unit(seed, fmt, r.sample_id), r.sample_id))[:n_keep]}
        for r in pool:
            if r.sample_id not in keep:
                continue
            meta: dict[str, object] = {"format": fmt}
            if in_context:
                others = [o for o in first_of_question.values() if question_id(o) != question_id(r)]
                others.sort(key=lambda o: _unit(seed, "demo", r.sample_id, o.sample_id))
                meta["demos"] = "".join(_demo(o, cot, answer_sentence) for o in others[:n_demos])
            if cot:  # the rationale is the source record's: so are the teacher's distributions over it
                meta[TEACHER_KEY] = r.sample_id
                out.append(_derive(r, fmt, meta=meta))
            else:  # "The answer is X" alone: no teacher distribution, NLL only
                meta["trigger"] = ""
                meta[TEACHER_KEY] = None
                out.append(_derive(r, fmt, rationale="", steps=(), meta=meta))
    return out


# ------------------------------------------------------------------------------- MCC-KD, SCoTD


@dataclass(frozen=True)
class Sample:
    """One sampled teacher rationale: text, its step spans and the teacher's parsed answer."""

    rationale: str
    steps: tuple[Span, ...]
    answer: str


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    """Lower-cased word n-grams (words = ``\\w+`` runs; a text shorter than n gives one n-gram)."""
    words = re.findall(r"\w+", text.lower())
    if len(words) < n:
        return {tuple(words)} if words else set()
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def jaccard(a: set[tuple[str, ...]], b: set[tuple[str, ...]]) -> float:
    """|a ∩ b| / |a ∪ b|, 1.0 for two empty sets."""
    return 1.0 if not a and not b else len(a & b) / len(a | b)


def select_diverse(texts: Sequence[str], k: int, n: int = 2) -> list[int]:
    """Indices of ``k`` mutually dissimilar texts by n-gram Jaccard similarity: first the least
    similar pair, then greedily the text whose largest similarity to the chosen ones is smallest
    (ties: lower index). Fewer than ``k`` texts: all of them, in order."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if len(texts) <= k:
        return list(range(len(texts)))
    grams = [ngrams(t, n) for t in texts]
    sim = {(i, j): jaccard(grams[i], grams[j]) for i, j in combinations(range(len(texts)), 2)}
    if k == 1:
        return [0]
    chosen = list(min(sim, key=lambda p: (sim[p], p)))
    while len(chosen) < k:
        rest = [i for i in range(len(texts)) if i not in chosen]
        chosen.append(min(rest, key=lambda i: (max(sim[tuple(sorted((i, c)))] for c in chosen), i)))  # type: ignore[index]
    return sorted(chosen)


def _sample_records(record: Record, samples: Iterable[tuple[int, Sample]]) -> list[Record]:
    return [_derive(record, f"r{i}", rationale=s.rationale, steps=s.steps, answer=record.answer,
                    meta={"teacher_answer": s.answer}) for i, s in samples]


def keep_all_samples(
    record: Record, samples: Sequence[Sample], is_correct: Callable[[str, str], bool] | None = None
) -> tuple[list[Record], int]:
    """SCoTD: one record per sampled rationale, ``<id>#r<k>`` with k the sample's index.
    ``is_correct(teacher_answer, gold)`` filters when given (SCoTD keeps all by default).
    Returns the records and the number dropped."""
    kept = [(i, s) for i, s in enumerate(samples) if is_correct is None or is_correct(s.answer, record.answer)]
    return _sample_records(record, kept), len(samples) - len(kept)


def mcc_kd_records(
    record: Record, samples: Sequence[Sample], k: int, is_correct: Callable[[str, str], bool], n: int = 2
) -> tuple[list[Record], int]:
    """MCC-KD: the correct samples, then ``k`` diverse ones (:func:`select_diverse`), as
    ``<id>#r<k>`` records of one question. Returns the records and the number dropped."""
    correct = [(i, s) for i, s in enumerate(samples) if is_correct(s.answer, record.answer)]
    picked = [correct[j] for j in select_diverse([s.rationale for _, s in correct], k, n)]
    return _sample_records(record, picked), len(samples) - len(picked)


# ------------------------------------------------------------------------------- SCOTT


def perturb_answer(answer: str, seed: int, key: str, choices: Sequence[str] | None = None) -> str:
    """A wrong answer, deterministic in (seed, key): another choice for multiple choice (as the
    release does), ``yes``↔``no``; a number moved by ±1..±max(1, ⌊|a|/5⌋) (kpod's choice: SCOTT
    has no numeric task). Anything else is an error."""
    u = _unit(seed, "perturb", key)
    if choices:
        others = [c for c in choices if c.strip().lower() != answer.strip().lower()]
        if not others:
            raise ValueError(f"{key}: no other choice than {answer!r}")
        return others[int(u * len(others))]
    low = answer.strip().lower()
    if low in ("yes", "no"):
        return "no" if low == "yes" else "yes"
    try:
        value = float(answer.replace(",", ""))
    except ValueError:
        raise ValueError(f"{key}: cannot perturb answer {answer!r} (not numeric, yes/no or a choice)") from None
    span = max(1, int(abs(value) // 5))
    step = 1 + int(u * 2 * span) % span
    moved = value + (step if u < 0.5 else -step)
    return str(int(moved)) if moved == int(moved) and "." not in answer else str(moved)


def factual_record(record: Record) -> Record:
    """SCOTT's factual example ``<id>#factual``: ``[factual] `` question, the gold rationale and answer."""
    return _derive(record, "factual", question=f"{SCOTT_PREFIXES['factual']}{record.question}",
                   meta={"task": "factual"})


def counterfactual_record(record: Record, rationale: str, steps: tuple[Span, ...], answer: str) -> Record:
    """SCOTT's counterfactual example ``<id>#cf``: ``[counterfactual] `` question, a rationale that
    supports the perturbed ``answer``, target = that answer. The rationale is input, not target:
    the plan must give all its steps (``meta["given"] = "all"``), so only the answer is learned."""
    return _derive(record, "cf", question=f"{SCOTT_PREFIXES['counterfactual']}{record.question}",
                   rationale=rationale, steps=steps, answer=answer,
                   meta={"task": "counterfactual", "given": "all", "gold_answer": record.answer})


def answer_edited_rationale(record: Record, new_answer: str) -> tuple[str, tuple[Span, ...]] | None:
    """kpod's offline stand-in for a teacher rationale of a perturbed answer: the last occurrence
    of the gold answer in the rationale (as a whole number/word) replaced by ``new_answer``, step
    spans shifted. ``None`` when the rationale never states the gold answer (caller counts it)."""
    pat = re.compile(rf"(?<![\w.]){re.escape(record.answer.strip())}(?![\w]|\.\d)")
    hits = list(pat.finditer(record.rationale))
    if not hits:
        return None
    s, e = hits[-1].span()
    delta = len(new_answer) - (e - s)
    text = record.rationale[:s] + new_answer + record.rationale[e:]
    steps = tuple((a if a <= s else a + delta, b if b < e else b + delta) for a, b in record.steps)
    return text, steps


def teacher_counterfactual_records(
    train: list[Record], counterfactuals: list[Record]
) -> tuple[list[Record], list[str], list[str]]:
    """SCOTT's examples from a teacher's counterfactual rationales (``kpod teach`` with
    ``teacher.hf.contrastive``): per training record its factual example, and per question one
    counterfactual example from the row ``<question_id>#counterfactual`` — matched by id, never by
    position — whose answer is the teacher's a'. Returns (records, ids of training records whose
    question has no counterfactual, question ids of counterfactuals no training record asked for).
    A counterfactual for another question text, or whose answer is the gold one, is an error."""
    by_question: dict[str, Record] = {}
    for c in counterfactuals:
        if not c.question_id.endswith(COUNTERFACTUAL_ID_SUFFIX):
            raise DataError(f"{c.sample_id}: not a teacher counterfactual (its id must end in "
                            f"{COUNTERFACTUAL_ID_SUFFIX!r}, as kpod teach writes it)")
        by_question.setdefault(c.question_id[: -len(COUNTERFACTUAL_ID_SUFFIX)], c)
    out: list[Record] = []
    missing: list[str] = []
    seen: set[str] = set()
    for r in train:
        out.append(factual_record(r))
        if r.question_id in seen:  # one counterfactual per question, with its first record
            continue
        seen.add(r.question_id)
        c = by_question.get(r.question_id)
        if c is None:
            missing.append(r.sample_id)
            continue
        if c.question != r.question:
            raise DataError(f"{c.sample_id}: the counterfactual's question differs from {r.sample_id}'s "
                            f"({c.question[:60]!r} vs {r.question[:60]!r}): files of different teacher runs?")
        if c.answer.strip().lower() == r.answer.strip().lower():
            raise DataError(f"{c.sample_id}: the counterfactual's answer {c.answer!r} is the gold answer")
        out.append(counterfactual_record(r, c.rationale, c.steps, c.answer))
    return out, missing, sorted(set(by_question) - seen)
