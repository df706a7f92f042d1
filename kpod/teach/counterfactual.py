"""SCOTT's teacher side in ``kpod teach`` (``teacher.hf.contrastive``): answer-conditioned requests,
the perturbed answer a' of each question, and the counterfactual rationales' output file.

Each question gets two contrastive requests (docs/teacher.md, docs/baselines.md §8):

* **factual** — the prompt states the gold answer a*, contrasted against a' (``perturbed:
  wrong_answer``) or an empty answer (``perturbed: empty``);
* **counterfactual** — roles swapped: the prompt states a', contrasted against a* (or empty).

a' is :func:`kpod.data.formats.perturb_answer` of (gold, recipe seed, sample_id, ``choices``): another
choice for multiple choice, yes↔no, a number moved by a few units — deterministic per question and
the same function the ``scott`` format's ``answer_edit`` uses. Both prompts, the mode and its
parameters are in the request, hence in the cache key: contrastive replies never mix with plain
ones, nor with another a' or γ.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kpod.data.formats import COUNTERFACTUAL_ID_SUFFIX, perturb_answer
from kpod.data.records import DataError
from kpod.teach.filter import Question
from kpod.teach.prompts import Message
from kpod.teacher_config import ContrastiveConfig

ROLES = ("factual", "counterfactual")


def perturbed_answer(q: Question, cfg: ContrastiveConfig, seed: int) -> str:
    """a' of question ``q``: deterministic in (seed, sample_id), never the gold answer."""
    try:
        return perturb_answer(q.gold, seed, q.sample_id, cfg.choices)
    except ValueError as e:
        raise DataError(f"teacher.hf.contrastive.choices: {e}; give the source's answer choices for a "
                        "multiple-choice data set") from None


def answers(role: str, gold: str, wrong: str, cfg: ContrastiveConfig) -> tuple[str, str]:
    """(the answer the prompt states, the contrast prompt's answer) of a factual or counterfactual request."""
    shown, other = (gold, wrong) if role == "factual" else (wrong, gold)
    return shown, (other if cfg.perturbed == "wrong_answer" else "")


def contrastive_request(
    render: Callable[[list[Message]], Any], messages: Callable[[str], list[Message]], shown: str, contrast: str,
    cfg: ContrastiveConfig,
) -> dict[str, Any]:
    """The request (and cache-key part) of one contrastive decode: both rendered prompts and the mode."""
    return {**render(messages(shown)), "contrast": render(messages(contrast))["text"],
            "contrastive": {"gamma": cfg.gamma, "tau": cfg.tau, "stop": list(cfg.stop)}}


def counterfactual_rows(
    questions: list[Question], replies: dict[str, str], wrong: dict[str, str]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows of ``<split>_counterfactual.json`` in the MCC-KD format the benchmark sources read:
    ``{id: <sample_id>#counterfactual, instruction, output: [r'], label: a', gold: a*}``; an empty
    reply writes no row (counted, its id listed)."""
    rows, dropped = [], []
    for q in questions:
        text = replies[q.sample_id].strip()
        if not text:
            dropped.append(q.sample_id)
            continue
        rows.append({"id": f"{q.sample_id}{COUNTERFACTUAL_ID_SUFFIX}", "instruction": q.question, "output": [text],
                     "label": wrong[q.sample_id], "gold": q.gold})
    counts = {"rationales": len(questions), "kept": len(rows), "dropped_empty": len(dropped), "dropped_ids": dropped}
    return rows, counts
