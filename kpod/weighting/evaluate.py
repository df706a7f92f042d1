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
"""

from __future__ import annotations

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
    with_side = _with_side_data(records)
    for r, toks in zip(with_side, rationale_tokens_many(with_side, template, tokenizer)):
        if not toks.rat_spans:
            continue
        anchors = np.asarray([s for s, _ in toks.rat_spans], dtype=np.int64)
        w = CharWeights((weights or {}).get(r.sample_id)).many(anchors, np.float64)
        is_key = _inside(anchors, r.meta["keypoint_spans"])
        is_fill = _inside(anchors, r.meta["filler_spans"]) & ~is_key
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
    "by_kind"}`` or None without
    side data; ``by_kind`` maps each keypoint kind present to ``{"auc", "n", "mean"}`` (against all filler).

    Uniform weights (``weights is None``) score every token 1, so every keypoint/filler pair ties
    and the AUC is 0.5 by definition: reported as such without tokenising the training set.
    """
    if weights is None:
        return {"auc": 0.5, "uniform": True} if _with_side_data(records) else None
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
    }
