"""The stage-wise collator: sample_ids + given-step counts → padded training tensors.

For a sample with ``c`` given steps, input = prompt + steps[:c] (labels −100, weight 0) and
target = steps[c:] + answer sentence + EOS. Decoder-only students keep one tokenisation of the
full serialisation and only move the loss mask; encoder–decoder students move the given steps
into the encoder text and re-tokenise the decoder target (cached per ``(sample_id, c)``).
Weights come from character spans through offsets, so they never shift (pitfall 7).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from kpod.data.packing import pack_examples
from kpod.data.padding import pad_batch, pad_to
from kpod.data.records import CharSpanWeights, DataError, Record
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
        # rows of one question (several rationales): the consistency loss checks a micro-batch
        # holds all of them (``question_sizes``) and compares their answers (``answer_value``)
        self.question_size = Counter(r.question_id for r in records)
        self.value_span: dict[str, tuple[int, int]] = {}
        self.ser: dict[str, Serialized] = {}
        self.weights: dict[str, CharWeights] = {}
        self._causal: dict[str, tuple[Encoded, np.ndarray]] = {}
        self._s2s: dict[tuple[str, int], tuple[Encoded, np.ndarray]] = {}
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

    def example(self, sample_id: str, given_steps: int) -> dict[str, np.ndarray]:
        """Arrays for one sample at ``given_steps`` (input_ids, labels, weights, is_answer, …)."""
        ser = self.ser[sample_id]
        c = min(given_steps, len(ser.steps))
        cut = ser.cut(c)
        if not self.is_encoder_decoder:
            enc, tw = self._causal[sample_id]
            labels, weights, is_answer = stage_targets(enc.anchors, enc.input_ids, ser, cut, tw)
            return {"input_ids": enc.input_ids, "labels": labels, "weights": weights, "is_answer": is_answer,
                    "answer_value": self._in_value(sample_id, enc.anchors, is_answer)}
        key = (sample_id, c)
        cached = self._s2s.get(key)
        if cached is None:
            try:
                enc = encode_seq2seq(self.tokenizer, ser, cut, self.max_length)
            except ValueError as e:
                raise DataError(f"sample {sample_id}: {e} (raise data.max_length)") from None
            assert enc.label_anchors is not None
            cached = (enc, token_weights(enc.label_anchors, ser, self.weights[sample_id]))
            self._s2s[key] = cached
        enc, tw = cached
        assert enc.labels_ids is not None and enc.label_anchors is not None
        labels, weights, is_answer = stage_targets(enc.label_anchors, enc.labels_ids, ser, cut, tw)
        return {"input_ids": enc.input_ids, "labels": labels, "weights": weights, "is_answer": is_answer,
                "answer_value": self._in_value(sample_id, enc.label_anchors, is_answer)}

    def _in_value(self, sample_id: str, anchors: np.ndarray, is_answer: np.ndarray) -> np.ndarray:
        start, end = self.value_span[sample_id]
        return is_answer & (anchors >= start) & (anchors < end)

    def target_anchors(self, sample_id: str, given_steps: int) -> np.ndarray:
        """The anchor (absolute character of the serialisation) of every position of
        ``example(sample_id, given_steps)["labels"]``: which step or part each target token is of."""
        if not self.is_encoder_decoder:
            return self._causal[sample_id][0].anchors
        self.example(sample_id, given_steps)  # builds (and caches) the stage's decoder encoding
        enc, _ = self._s2s[(sample_id, min(given_steps, len(self.ser[sample_id].steps)))]
        assert enc.label_anchors is not None
        return enc.label_anchors

    def packed(
        self, sample_ids: Sequence[str], given: dict[str, int] | None = None, rows_of: int | None = 1
    ) -> dict[str, Any]:
        """The same micro-batch, padding-free (causal students; :mod:`kpod.data.packing`), in rows
        of ``rows_of`` × its longest sequence (``None``: one row holding every sequence)."""
        if self.is_encoder_decoder:
            raise ValueError("packing needs a causal (decoder-only) student")
        exs = [self.example(sid, (given or {}).get(sid, 0)) for sid in sample_ids]
        lengths = [len(e["input_ids"]) for e in exs]
        width = sum(lengths) if rows_of is None else rows_of * max(lengths)
        return pack_examples(exs, sample_ids, self.pad_id, width)

    def __call__(self, sample_ids: Sequence[str], given: dict[str, int] | None = None) -> dict[str, Any]:
        """A padded batch; ``given[sample_id]`` is c (0 when absent). Carries ``sample_ids``."""
        exs = [self.example(sid, (given or {}).get(sid, 0)) for sid in sample_ids]
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
            "answer_value": pad_to([e["answer_value"] for e in exs], False, dtype=torch.bool),
            "question_ids": [self.records[sid].question_id for sid in sample_ids],
            "question_sizes": [self.question_size[self.records[sid].question_id] for sid in sample_ids],
        }


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
