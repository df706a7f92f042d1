"""How fluent a student already is in the rationales' language, before any distillation.

KPOD's premise is a student that writes fluent text and errs on the few tokens that carry the
reasoning. This check measures that premise on the built-in data set: the student's
teacher-forced NLL (nats per token, question given) on the training rationales, split by the
side data (``Record.meta["keypoint_spans"]``, ``["filler_spans"]``) into

* ``keypoint`` tokens — calculations, also split into ``number``, ``operator`` and ``equals``
  (the kinds of :mod:`kpod.weighting.evaluate`);
* ``filler`` tokens — the chatty phrasing that carries no information;
* ``frame`` tokens — the rest of the rationale (actions, units, punctuation).

A fluent student has a low filler (and frame) NLL and a keypoint NLL that is still high. No answer
is read: the answer sentence after the rationale is not scored, and nothing is generated. Side
data is looked up on the record that produced each sequence, so the figures belong to their
``sample_id`` (``by_sample``), never to a position.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from kpod.data.records import Record
from kpod.data.template import PromptTemplate
from kpod.difficulty import teacher_forced_nlls
from kpod.weighting.evaluate import keypoint_kind

CLASSES = ("keypoint", "number", "operator", "equals", "filler", "frame")


def _class_of(rationale: str, pos: int, keypoints: list[tuple[int, int]], fillers: list[tuple[int, int]]) -> list[str]:
    """The classes of the token anchored at character ``pos`` of the rationale (a keypoint token
    is also counted under its kind: number if a digit, equals if ``=``, operator otherwise)."""
    if any(s <= pos < e for s, e in keypoints):
        return ["keypoint", keypoint_kind(rationale[pos])]
    if any(s <= pos < e for s, e in fillers):
        return ["filler"]
    return ["frame"]


def token_nll_by_class(
    model: Any, tokenizer: Any, is_encoder_decoder: bool, records: list[Record], template: PromptTemplate,
    batch_size: int = 64, device: torch.device | None = None,
) -> dict[str, Any]:
    """``{"classes": {class: {"nll", "n"}}, "by_sample": {sample_id: {class: [sum, n]}}, "records": n}``
    over the records that carry side data (others are counted in ``"without_side_data"``)."""
    device = device or torch.device("cpu")
    scored = [r for r in records if r.meta.get("keypoint_spans") is not None and r.meta.get("filler_spans") is not None]
    sers = [template.serialize(r) for r in scored]
    nlls = teacher_forced_nlls(model, tokenizer, is_encoder_decoder, sers, batch_size, device)
    by_sample: dict[str, dict[str, list[float]]] = {}
    for r, ser, (nll, anchors) in zip(scored, sers, nlls):
        sums: dict[str, list[float]] = {}
        rel = np.asarray(anchors) - ser.rationale_start
        for value, pos in zip(nll.tolist(), rel.tolist()):
            if not 0 <= pos < len(r.rationale):  # the prompt, the answer sentence, special tokens
                continue
            for c in _class_of(r.rationale, pos, r.meta["keypoint_spans"], r.meta["filler_spans"]):
                acc = sums.setdefault(c, [0.0, 0])
                acc[0] += value
                acc[1] += 1
        by_sample[r.sample_id] = sums
    classes = {}
    for c in CLASSES:
        total = sum(s[c][0] for s in by_sample.values() if c in s)
        n = sum(s[c][1] for s in by_sample.values() if c in s)
        if n:
            classes[c] = {"nll": round(total / n, 4), "n": int(n)}
    return {"classes": classes, "by_sample": by_sample, "records": len(scored),
            "without_side_data": len(records) - len(scored)}
