"""Tokenization with offsets: steps map to token spans, weights map by characters.

A token *belongs* to the character of its first non-whitespace character (its anchor);
whitespace-only tokens attach to what follows (anchor = token end). The label mask of a stage
with cut position ``cut`` is ``anchor >= cut``; weights are looked up by anchor, so a different
tokenizer or a moved split can never shift them (spec §10(f), pitfalls 5 and 7).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from kpod.data.template import Serialized

IGNORE_INDEX = -100


# BPE training time grows with the square of the longest word; a multi-MB row would stall it.
# Each text feeds the trainer with at most this many characters (real examples are far shorter;
# a longer one exceeds any tiny student's positions and meets data.on_too_long anyway).
TOKENIZER_TRAIN_CHARS = 20_000


def train_tokenizer(texts: Iterable[str], vocab_size: int = 1000):  # -> PreTrainedTokenizerFast
    """A small BPE tokenizer trained in-process; every digit is its own token.

    Spaces are kept as a leading "▁" (Metaspace), so decoding restores the text exactly and
    character offsets are exact. Special tokens: <pad>=0, <unk>=1, <s>=2, </s>=3. Only the
    first ``TOKENIZER_TRAIN_CHARS`` characters of each text shape the vocabulary.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Metaspace(),
            # one digit per token; punctuation on its own (optionally with its leading space)
            pre_tokenizers.Split(Regex(r"▁?[0-9]|▁?[^\w▁]"), behavior="isolated"),
        ]
    )
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<unk>", "<s>", "</s>"],
        initial_alphabet=list("0123456789+-*/=.,$%:?!'\"()"),
        show_progress=False,
    )
    tok.train_from_iterator((t[:TOKENIZER_TRAIN_CHARS] for t in texts), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
    )


def anchors_from_offsets(text: str, offsets: Sequence[tuple[int, int]], shift: int = 0) -> np.ndarray:
    """Anchor character (absolute, + ``shift``) of each token; see the module docstring."""
    out = np.empty(len(offsets), dtype=np.int64)
    nxt = len(text)  # anchor of the next token with visible text (scanning right to left)
    for i in range(len(offsets) - 1, -1, -1):
        s, e = offsets[i]
        a = s
        while a < e and text[a].isspace():
            a += 1
        if a < e:
            nxt = a
            out[i] = a + shift
        else:  # whitespace-only: belongs to what follows
            out[i] = nxt + shift
    return out


class CharWeights:
    """Piecewise-constant weights over absolute character spans; 1.0 where no span covers."""

    def __init__(self, spans: Sequence[tuple[int, int, float]] | None, default: float = 1.0):
        spans = sorted(spans or [])
        self._starts = [s for s, _, _ in spans]
        self._spans = spans
        self.default = default

    def __call__(self, pos: int) -> float:
        i = bisect.bisect_right(self._starts, pos) - 1
        if i >= 0:
            s, e, w = self._spans[i]
            if s <= pos < e:
                return w
        return self.default


@dataclass
class Encoded:
    """Token ids with anchors; labels/weights for a stage are derived with :func:`stage_targets`."""

    input_ids: np.ndarray  # [L] causal: full sequence; seq2seq: encoder ids
    anchors: np.ndarray  # [L] anchor char per input token (causal) — -1 for BOS
    labels_ids: np.ndarray | None = None  # seq2seq only: decoder target ids
    label_anchors: np.ndarray | None = None  # seq2seq only


def encode_causal(tokenizer, ser: Serialized, max_length: int | None = None) -> Encoded:
    enc = tokenizer(ser.text, return_offsets_mapping=True, add_special_tokens=False)
    ids = list(enc["input_ids"])
    anchors = list(anchors_from_offsets(ser.text, enc["offset_mapping"]))
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    if bos is not None and bos != eos:
        ids, anchors = [bos, *ids], [-1, *anchors]
    ids.append(eos)
    anchors.append(len(ser.text))  # EOS belongs to the answer part
    if max_length is not None and len(ids) > max_length:
        raise ValueError(f"sequence of {len(ids)} tokens exceeds max_length={max_length}")
    return Encoded(np.asarray(ids, dtype=np.int64), np.asarray(anchors, dtype=np.int64))


def encode_seq2seq(tokenizer, ser: Serialized, cut: int, max_length: int | None = None) -> Encoded:
    """Encoder gets ``text[:cut]``; decoder target is ``text[cut:]`` + EOS."""
    src = ser.text[:cut].rstrip()
    enc = tokenizer(src, add_special_tokens=False)
    eos = tokenizer.eos_token_id
    src_ids = [*enc["input_ids"], eos]
    dec = tokenizer(ser.text[cut:], return_offsets_mapping=True, add_special_tokens=False)
    tgt_ids = [*dec["input_ids"], eos]
    tgt_anchors = [*anchors_from_offsets(ser.text[cut:], dec["offset_mapping"], shift=cut), len(ser.text)]
    for n, what in ((len(src_ids), "encoder"), (len(tgt_ids), "decoder")):
        if max_length is not None and n > max_length:
            raise ValueError(f"{what} sequence of {n} tokens exceeds max_length={max_length}")
    return Encoded(
        np.asarray(src_ids, dtype=np.int64),
        np.full(len(src_ids), -1, dtype=np.int64),
        np.asarray(tgt_ids, dtype=np.int64),
        np.asarray(tgt_anchors, dtype=np.int64),
    )


def token_weights(anchors: np.ndarray, ser: Serialized, weights: CharWeights) -> np.ndarray:
    """Weight of every token by its anchor: rationale tokens from ``weights``, answer-sentence
    tokens (EOS included) 1, prompt tokens 0. Independent of the stage, so computed once."""
    w = np.zeros(len(anchors), dtype=np.float32)
    ans = ser.answer_span[0]
    for i, a in enumerate(anchors):
        if a >= ans:
            w[i] = 1.0
        elif a >= ser.rationale_start:
            w[i] = weights(int(a))
    return w


def stage_targets(
    anchors: np.ndarray, ids: np.ndarray, ser: Serialized, cut: int, token_w: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels (−100 before ``cut``), weights (0 before ``cut``) and the answer-part mask."""
    target = anchors >= cut
    labels = np.where(target, ids, IGNORE_INDEX)
    is_answer = target & (anchors >= ser.answer_span[0])
    return labels, np.where(target, token_w, 0.0).astype(np.float32), is_answer


def token_step_spans(anchors: np.ndarray, ser: Serialized) -> list[tuple[int, int]]:
    """Token index span ``[first, last]`` (inclusive) of each step, from the token anchors."""
    out: list[tuple[int, int]] = []
    for s, e in ser.steps:
        idx = np.nonzero((anchors >= s) & (anchors < e))[0]
        if len(idx) == 0:
            raise ValueError(f"step at chars {s}:{e} has no tokens")
        out.append((int(idx[0]), int(idx[-1])))
    return out
