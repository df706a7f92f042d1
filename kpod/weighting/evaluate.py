"""How well token weights find keypoints: ROC-AUC of calculation tokens vs filler tokens.

Uses the built-in data set's side data (``Record.meta["keypoint_spans"]`` /
``["filler_spans"]``, character spans of calculations — numbers, operators, ``=`` — and of
filler phrasing). Each student token of a rationale is classed by its anchor character; tokens in
neither class are ignored. AUC = P(w_keypoint > w_filler) + ½·P(tie) (the Mann–Whitney U
statistic divided by n₁·n₀, via scipy).

The report also splits the keypoints by kind — ``number`` (anchor is a digit), ``equals`` (``=``)
and ``operator`` (anything else inside a calculation span) — each against all filler tokens: one
overall figure hides that a mask can keep every number and drop every operator (an answer
predictor that sees ``4 3 7`` does not need the ``+``), which is what SmolLM2's mask does on the
built-in set (docs/benchmarks.md).

Data without side data (benchmark rationales: SVAMP's GPT-3.5 text) gets a **proxy**: the
keypoints are the numbers, the arithmetic operators between numbers and ``=`` found by
:data:`PROXY_KEYPOINT` in the rationale, scored against *every other* rationale token (there is no
filler annotation); the report says ``"proxy": true``. It measures whether a weighting favours
the calculation, not whether it finds the phrasing the built-in set marks as filler.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from kpod.data.records import Record
from kpod.data.template import PromptTemplate
from kpod.data.tokenize import CharWeights
from kpod.weighting.base import CharSpanWeights
from kpod.weighting.tokens import rationale_tokens_many


def _inside(pos: np.ndarray, spans: list[tuple[int, int]]) -> np.ndarray:
    if not spans:
        return np.zeros(len(pos), dtype=bool)
    sp = np.asarray(spans, dtype=np.int64)
    return ((pos[:, None] >= sp[None, :, 0]) & (pos[:, None] < sp[None, :, 1])).any(axis=1)


def _with_side_data(records: list[Record]) -> list[Record]:
    return [r for r in records if r.meta.get("keypoint_spans") is not None and r.meta.get("filler_spans") is not None]


# a calculation as the built-in set marks one: numbers joined by operators or '=' (``100 - 68 =
# 32``, ``3x4=12``), spaces inside included; or a lone number or '='
_NUMBER = r"\d+(?:[.,]\d+)*"
PROXY_KEYPOINT = re.compile(rf"{_NUMBER}(?:\s?[-+*/×÷x=]\s?{_NUMBER})*|=")


def proxy_spans(text: str) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(keypoint spans, every other span) of a rationale by :data:`PROXY_KEYPOINT`."""
    keys = [m.span() for m in PROXY_KEYPOINT.finditer(text)]
    rest, at = [], 0
    for s, e in keys:
        if s > at:
            rest.append((at, s))
        at = e
    if at < len(text):
        rest.append((at, len(text)))
    return keys, rest


def _side(records: list[Record]) -> tuple[list[Record], list[tuple[list[tuple[int, int]], list[tuple[int, int]]]], bool]:
    """The records scored, their (keypoint, filler) spans, and whether the spans are the proxy
    (no record has side data)."""
    with_side = _with_side_data(records)
    if with_side:
        return with_side, [(r.meta["keypoint_spans"], r.meta["filler_spans"]) for r in with_side], False
    scored = [r for r in records if r.rationale]
    return scored, [proxy_spans(r.rationale) for r in scored], True


KEYPOINT_KINDS = ("number", "operator", "equals")


def keypoint_kind(char: str) -> str:
    return "number" if char.isdigit() else "equals" if char == "=" else "operator"


def keypoint_scores(
    records: list[Record], weights: CharSpanWeights | None, template: PromptTemplate, tokenizer: Any,
    frame: list[float] | None = None,
) -> tuple[list[float], list[float], list[str]]:
    """Weights of keypoint tokens, weights of filler tokens, and each keypoint token's kind;
    ``frame``, when given, receives the weights of the other rationale tokens (actions, units,
    punctuation: neither keypoint nor filler)."""
    pos: list[float] = []
    neg: list[float] = []
    kinds: list[str] = []
    scored, spans, _ = _side(records)
    for r, (key_spans, fill_spans), toks in zip(scored, spans, rationale_tokens_many(scored, template, tokenizer)):
        if not toks.rat_spans:
            continue
        anchors = np.asarray([s for s, _ in toks.rat_spans], dtype=np.int64)
        w = CharWeights((weights or {}).get(r.sample_id)).many(anchors, np.float64)
        is_key = _inside(anchors, key_spans)
        is_fill = _inside(anchors, fill_spans) & ~is_key
        pos.extend(w[is_key].tolist())
        neg.extend(w[is_fill].tolist())
        if frame is not None:
            visible = np.asarray([e > s for s, e in toks.rat_spans], dtype=bool)  # not whitespace-only
            frame.extend(w[~is_key & ~is_fill & visible].tolist())
        kinds.extend(keypoint_kind(r.rationale[a]) for a in anchors[is_key].tolist())
    return pos, neg, kinds


def _auc(pos: list[float], neg: list[float]) -> float:
    from scipy.stats import mannwhitneyu

    return round(float(mannwhitneyu(pos, neg, alternative="two-sided").statistic) / (len(pos) * len(neg)), 4)


def keypoint_auc(
    records: list[Record], weights: CharSpanWeights | None, template: PromptTemplate, tokenizer: Any
) -> dict[str, Any] | None:
    """``{"auc", "n_keypoint", "n_filler", "mean_keypoint", "mean_filler", "n_frame", "mean_frame",
    "by_kind", "proxy"}`` or None without rationales; ``by_kind`` maps each keypoint kind present to
    ``{"auc", "n", "mean"}`` (against all filler); ``proxy``: the spans are the numbers-and-operators
    proxy (no side data; "filler" is then every other token).

    Uniform weights (``weights is None``) score every token 1, so every keypoint/filler pair ties
    and the AUC is 0.5 by definition: reported as such without tokenising the training set.
    """
    scored, _, proxy = _side(records)
    if weights is None:
        return {"auc": 0.5, "uniform": True, "proxy": proxy} if scored else None
    frame: list[float] = []
    pos, neg, kinds = keypoint_scores(records, weights, template, tokenizer, frame)
    if not pos or not neg:
        return None
    by_kind = {}
    for kind in KEYPOINT_KINDS:
        of_kind = [w for w, k in zip(pos, kinds) if k == kind]
        if of_kind:
            by_kind[kind] = {"auc": _auc(of_kind, neg), "n": len(of_kind), "mean": round(sum(of_kind) / len(of_kind), 4)}
    return {
        "auc": _auc(pos, neg),
        "n_keypoint": len(pos),
        "n_filler": len(neg),
        "mean_keypoint": round(sum(pos) / len(pos), 4),
        "mean_filler": round(sum(neg) / len(neg), 4),
        # the rest of the rationale (actions, units, punctuation): the AUC does not see these
        # tokens, yet a student must still learn to write them
        "n_frame": len(frame),
        "mean_frame": round(sum(frame) / len(frame), 4) if frame else None,
        "by_kind": by_kind,
        "proxy": proxy,
    }
