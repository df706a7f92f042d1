"""The stage-wise collator: sample_ids + given-step counts → padded training tensors.

For a sample with ``c`` given steps, input = prompt + steps[:c] (labels −100, weight 0) and
target = steps[c:] + answer sentence + EOS. Decoder-only students keep one tokenisation of the
full serialisation and only move the loss mask; encoder–decoder students move the given steps
into the encoder text and re-tokenise the decoder target (cached per ``(sample_id, c)``).
Weights come from character spans through offsets, so they never shift with the tokenisation.

Two per-record rules, read from the record (by sample_id), never from a row's position:
a record with ``meta["given"] == "all"`` always has every step given, whatever the plan says
(SCOTT's counterfactual examples: the rationale is input, only the answer is learned); and every
batch carries ``tasks``, each row's ``meta["task"]`` ("" for a record without one), for losses
that weigh tasks apart (DSbS, SCOTT).

Token-level curricula (``icl``, docs/baselines.md §3) also give a *prefix ratio* ``p``: the
leading ``⌊n·p⌋`` of the ``n`` target tokens under ``c`` are given too. The cut stays a
character — the anchor of target token ``⌊n·p⌋`` — so labels, weights and the seq2seq
re-tokenisation follow the same character rule as step cuts.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from kpod.data.packing import CHAR_POS_PAD, pack_examples
from kpod.data.padding import pad_batch, pad_to
from kpod.data.prefix_ratio import prefix_char_cut
from kpod.data.records import CharSpanWeights, DataError, Record, teacher_key
from kpod.data.template import PromptTemplate, Serialized
from kpod.data.tokenize import (
    IGNORE_INDEX,
    CharWeights,
    Encoded,
    check_length,
    encode_causal_many,
    encode_seq2seq,
    stage_targets,
    token_weights,
)


class StageCollator:
    def __init__(
        self,
        records: Sequence[Record],
        template: PromptTemplate,
        tokenizer: Any,
        is_encoder_decoder: bool,
        weights: CharSpanWeights | None = None,
        max_length: int | None = None,
        encoded: Mapping[str, Encoded] | None = None,
    ) -> None:
        """``encoded``: causal encodings by sample_id (:func:`encode_causal_many`) the caller already
        has; they are used instead of tokenising again (and must come from the same tokenizer)."""
        self.tokenizer = tokenizer
        self.is_encoder_decoder = is_encoder_decoder
        self.max_length = max_length
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.records = {r.sample_id: r for r in records}
        self.all_given = {r.sample_id for r in records if given_all(r)}
        # rows of one question (several rationales): the consistency loss checks a micro-batch
        # holds all of them (``question_sizes``) and compares their answers (``answer_value``)
        self.question_size = Counter(r.question_id for r in records)
        self.value_span: dict[str, tuple[int, int]] = {}
        self.ser: dict[str, Serialized] = {}
        self.weights: dict[str, CharWeights] = {}
        self._causal: dict[str, tuple[Encoded, np.ndarray]] = {}
        self._s2s: dict[tuple[str, int], tuple[Encoded, np.ndarray]] = {}  # by (sample_id, cut)
        for r in records:
            ser = template.serialize(r)
            self.ser[r.sample_id] = ser
            self.value_span[r.sample_id] = answer_value_span(ser, r.answer)
            spans = (weights or {}).get(r.sample_id)
            if weights is not None and spans is None and r.steps:
                raise KeyError(f"no token weights for sample_id {r.sample_id!r}")
            off = ser.rationale_start
            self.weights[r.sample_id] = CharWeights(
                [(s + off, e + off, w) for s, e, w in spans] if spans else None
            )
        if not is_encoder_decoder:  # one tokenisation of each full text, batched
            sids = [r.sample_id for r in records]
            if encoded is not None:
                encs = [encoded[s] for s in sids]
            else:
                encs = encode_causal_many(tokenizer, [self.ser[s] for s in sids])
            for sid, enc in zip(sids, encs):
                try:
                    check_length(enc, max_length)
                except ValueError as e:
                    raise DataError(
                        f"sample {sid}: {e} (raise data.max_length, or set data.on_too_long: skip)"
                    ) from None
                self._causal[sid] = (enc, token_weights(enc.anchors, self.ser[sid], self.weights[sid]))

    def length(self, sample_id: str) -> int:
        """A sample's length for length-grouped batching (characters of its serialisation)."""
        return len(self.ser[sample_id].text)

    def stage_cut(self, sample_id: str, given_steps: int, prefix_ratio: float = 0.0) -> int:
        """Character where the target begins: after ``given_steps`` steps, then (prefix ratio
        ``p > 0``) after the first ``⌊n·p⌋`` of the ``n`` target tokens left by that cut."""
        ser = self.ser[sample_id]
        cut = ser.cut(self.effective_given(sample_id, given_steps))
        if prefix_ratio == 0.0 or sample_id in self.all_given:  # an all-given record's target is its answer
            return cut
        return prefix_char_cut(self._target_at(sample_id, cut)[0], prefix_ratio, len(ser.text))

    def _target_at(self, sample_id: str, cut: int) -> tuple[np.ndarray, np.ndarray]:
        """Anchors of the target tokens when the target begins at character ``cut``, and the
        labels' anchors (every label position; causal: the whole sequence)."""
        if not self.is_encoder_decoder:
            anchors = self._causal[sample_id][0].anchors
            return anchors[anchors >= cut], anchors
        enc, _ = self._s2s_at(sample_id, cut)
        assert enc.label_anchors is not None
        return enc.label_anchors, enc.label_anchors

    def _s2s_at(self, sample_id: str, cut: int) -> tuple[Encoded, np.ndarray]:
        """The encoder–decoder encoding with the target from ``cut`` on (cached) and its token weights."""
        key = (sample_id, cut)
        cached = self._s2s.get(key)
        if cached is None:
            ser = self.ser[sample_id]
            try:
                enc = encode_seq2seq(self.tokenizer, ser, cut, self.max_length)
            except ValueError as e:
                raise DataError(f"sample {sample_id}: {e} (raise data.max_length)") from None
            assert enc.label_anchors is not None
            cached = (enc, token_weights(enc.label_anchors, ser, self.weights[sample_id]))
            self._s2s[key] = cached
        return cached

    def example(self, sample_id: str, given_steps: int, prefix_ratio: float = 0.0) -> dict[str, np.ndarray]:
        """Arrays for one sample at ``given_steps`` (input_ids, labels, weights, is_answer, …)."""
        ser = self.ser[sample_id]
        cut = self.stage_cut(sample_id, given_steps, prefix_ratio)
        if not self.is_encoder_decoder:
            enc, tw = self._causal[sample_id]
            labels, weights, is_answer = stage_targets(enc.anchors, enc.input_ids, ser, cut, tw)
            return {"input_ids": enc.input_ids, "labels": labels, "weights": weights, "is_answer": is_answer,
                    "answer_value": self._in_value(sample_id, enc.anchors, is_answer),
                    "char_pos": enc.anchors - ser.rationale_start}
        enc, tw = self._s2s_at(sample_id, cut)
        assert enc.labels_ids is not None and enc.label_anchors is not None
        labels, weights, is_answer = stage_targets(enc.label_anchors, enc.labels_ids, ser, cut, tw)
        return {"input_ids": enc.input_ids, "labels": labels, "weights": weights, "is_answer": is_answer,
                "answer_value": self._in_value(sample_id, enc.label_anchors, is_answer),
                "char_pos": enc.label_anchors - ser.rationale_start}

    def _in_value(self, sample_id: str, anchors: np.ndarray, is_answer: np.ndarray) -> np.ndarray:
        start, end = self.value_span[sample_id]
        return is_answer & (anchors >= start) & (anchors < end)

    def effective_given(self, sample_id: str, given_steps: int) -> int:
        """The steps given as input for ``sample_id`` at the plan's ``given_steps``: capped at its
        step count, and all of them for a ``meta["given"] == "all"`` record."""
        n = len(self.ser[sample_id].steps)
        return n if sample_id in self.all_given else min(given_steps, n)

    def tasks(self, sample_ids: Sequence[str]) -> list[str]:
        """Each sample's ``meta["task"]`` ("" without one), in the order of ``sample_ids``."""
        return [str(self.records[sid].meta.get("task", "")) for sid in sample_ids]

    def teacher_keys(self, sample_ids: Sequence[str]) -> list[str | None]:
        """Where each sample's stored teacher distributions are (:func:`kpod.data.records.teacher_key`)."""
        return [teacher_key(self.records[sid]) for sid in sample_ids]

    def target_anchors(self, sample_id: str, given_steps: int, prefix_ratio: float = 0.0) -> np.ndarray:
        """The anchor (absolute character of the serialisation) of every position of
        ``example(sample_id, given_steps, prefix_ratio)["labels"]``: which step or part each
        target token is of."""
        return self._target_at(sample_id, self.stage_cut(sample_id, given_steps, prefix_ratio))[1]

    def packed(
        self,
        sample_ids: Sequence[str],
        given: dict[str, int] | None = None,
        rows_of: int | None = 1,
        prefix_ratio: float = 0.0,
    ) -> dict[str, Any]:
        """The same micro-batch, padding-free (causal students; :mod:`kpod.data.packing`), in rows
        of ``rows_of`` × its longest sequence (``None``: one row holding every sequence)."""
        if self.is_encoder_decoder:
            raise ValueError("packing needs a causal (decoder-only) student")
        exs = [self.example(sid, (given or {}).get(sid, 0), prefix_ratio) for sid in sample_ids]
        lengths = [len(e["input_ids"]) for e in exs]
        width = sum(lengths) if rows_of is None else rows_of * max(lengths)
        packed = pack_examples(exs, sample_ids, self.pad_id, width)
        packed["tasks"] = self.tasks(sample_ids)  # per sequence; seq_index maps tokens to them
        packed["teacher_keys"] = self.teacher_keys(sample_ids)
        return packed

    def __call__(
        self, sample_ids: Sequence[str], given: dict[str, int] | None = None, prefix_ratio: float = 0.0
    ) -> dict[str, Any]:
        """A padded batch; ``given[sample_id]`` is c (0 when absent), ``prefix_ratio`` the
        token-level share of each target also given. Carries ``sample_ids``."""
        exs = [self.example(sid, (given or {}).get(sid, 0), prefix_ratio) for sid in sample_ids]
        input_ids, attention = pad_batch([e["input_ids"] for e in exs], self.pad_id)
        labels = pad_to([e["labels"] for e in exs], IGNORE_INDEX)
        weights = pad_to([e["weights"] for e in exs], 0.0, dtype=torch.float32)
        is_answer = pad_to([e["is_answer"] for e in exs], False, dtype=torch.bool)
        return {
            "input_ids": input_ids,
            "attention_mask": attention,
            "labels": labels,
            "weights": weights,
            "is_answer": is_answer,
            "sample_ids": list(sample_ids),
            "tasks": self.tasks(sample_ids),
            "teacher_keys": self.teacher_keys(sample_ids),
            "answer_value": pad_to([e["answer_value"] for e in exs], False, dtype=torch.bool),
            # each label position's character offset from the rationale's start (negative in the
            # prompt): what side data per target token (a teacher's distributions) is matched by
            "char_pos": pad_to([e["char_pos"] for e in exs], CHAR_POS_PAD),
            "question_ids": [self.records[sid].question_id for sid in sample_ids],
            "question_sizes": [self.question_size[self.records[sid].question_id] for sid in sample_ids],
        }


def given_all(record: Record) -> bool:
    """Whether the record's whole rationale is always input (``meta["given"] == "all"``); any
    other value of ``meta["given"]`` is an error naming the record."""
    value = record.meta.get("given")
    if value is None:
        return False
    if value != "all":
        raise DataError(f"sample {record.sample_id}: meta['given'] must be 'all' (or absent), got {value!r}")
    return True


def answer_value_span(ser: Serialized, answer: str) -> tuple[int, int]:
    """Characters of the answer value inside the rendered answer sentence (its last occurrence:
    the template's ``{answer}``); an empty span if the sentence does not contain it."""
    a, b = ser.answer_span
    at = ser.text.rfind(answer.strip(), a, b) if answer.strip() else -1
    return (at, at + len(answer.strip())) if at >= 0 else (b, b)


def token_lengths(
    records: Sequence[Record], template: PromptTemplate, tokenizer: Any, is_encoder_decoder: bool
) -> dict[str, int]:
    """Longest sequence the collator will build for each sample, in tokens (batch-tokenized).

    Causal: the whole serialisation with BOS/EOS, exactly as :func:`encode_causal` counts it.
    Seq2seq: the longer of the encoder side with every step given and the decoder side with
    none given (the extremes; the collator still checks each stage when it builds it).
    """
    sers = [template.serialize(r) for r in records]
    if not is_encoder_decoder:
        bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
        extra = 1 + (1 if bos is not None and bos != eos else 0)
        ids = tokenizer([s.text for s in sers], add_special_tokens=False)["input_ids"]
        return {r.sample_id: len(x) + extra for r, x in zip(records, ids)}
    src = tokenizer([s.text[: s.cut(len(s.steps))].rstrip() for s in sers], add_special_tokens=False)["input_ids"]
    tgt = tokenizer([s.text[s.cut(0) :] for s in sers], add_special_tokens=False)["input_ids"]
    return {r.sample_id: max(len(a), len(b)) + 1 for r, a, b in zip(records, src, tgt)}
