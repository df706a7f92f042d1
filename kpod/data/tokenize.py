"""Tokenization with offsets: steps map to token spans, weights map by characters.

A token *belongs* to the character of its first non-whitespace character (its anchor);
whitespace-only tokens attach to what follows (anchor = token end). The label mask of a stage
with cut position ``cut`` is ``anchor >= cut``; weights are looked up by anchor, so a different
tokenizer or a moved split can never shift them.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

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


# every code point for which str.isspace() is true: a fixed, short list, the highest U+3000
_SPACE_LIMIT = 0x3100
_IS_SPACE = np.asarray([chr(c).isspace() for c in range(_SPACE_LIMIT + 1)], dtype=bool)  # last: False


def _visible_positions(text: str) -> np.ndarray:
    """Indices of the characters of ``text`` that are not whitespace (``str.isspace``)."""
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    return np.flatnonzero(~_IS_SPACE[np.minimum(codes, _SPACE_LIMIT)])


def anchors_from_offsets(text: str, offsets: Sequence[tuple[int, int]], shift: int = 0) -> np.ndarray:
    """Anchor character (absolute, + ``shift``) of each token; see the module docstring.

    A token's anchor is its first visible character; a whitespace-only (or empty) token takes
    the anchor of the next token with visible text, or ``len(text)`` when none follows.
    Vectorised with binary searches over the positions of the visible characters.
    """
    n = len(offsets)
    if n == 0:
        return np.empty(0, dtype=np.int64)
    off = np.asarray(offsets, dtype=np.int64).reshape(n, 2)
    starts, ends = off[:, 0], off[:, 1]
    visible_pos = _visible_positions(text)
    first = np.searchsorted(visible_pos, starts, side="left")
    cand = np.append(visible_pos, len(text))[first]  # first visible char at or after the start
    has_text = cand < ends
    out = np.full(n, len(text), dtype=np.int64)
    idx = np.nonzero(has_text)[0]
    if len(idx):
        # each token takes the anchor of the next token (itself included) with visible text
        nxt = np.searchsorted(idx, np.arange(n), side="left")
        found = nxt < len(idx)
        out[found] = cand[idx[nxt[found]]]
    return out + shift


class CharWeights:
    """Piecewise-constant weights over absolute character spans; 1.0 where no span covers."""

    def __init__(self, spans: Sequence[tuple[int, int, float]] | None, default: float = 1.0):
        spans = sorted(spans or [])
        self._starts = [s for s, _, _ in spans]
        self._spans = spans
        self.default = default

    def many(self, positions: np.ndarray, dtype: Any = np.float32) -> np.ndarray:
        """``self(p)`` for every position, vectorised."""
        out = np.full(len(positions), self.default, dtype=dtype)
        if not self._spans or not len(positions):
            return out
        starts = np.asarray(self._starts, dtype=np.int64)
        ends = np.asarray([e for _, e, _ in self._spans], dtype=np.int64)
        ws = np.asarray([w for _, _, w in self._spans], dtype=dtype)
        i = np.searchsorted(starts, positions, side="right") - 1
        ok = i >= 0
        ok[ok] &= positions[ok] < ends[i[ok]]
        out[ok] = ws[i[ok]]
        return out

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
    enc = encode_causal_many(tokenizer, [ser])[0]
    check_length(enc, max_length)
    return enc


def encode_causal_many(tokenizer, sers: Sequence[Serialized], chunk: int = 1024) -> list[Encoded]:
    """:func:`encode_causal` (without the length check) for many texts, in batched tokenizer calls
    of ``chunk`` texts (the tokenizer's Python lists of a whole data set at once cost more memory
    than the arrays kept)."""
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    head = [bos] if bos is not None and bos != eos else []
    out = []
    for start in range(0, len(sers), chunk):
        part = sers[start : start + chunk]
        enc = tokenizer([s.text for s in part], return_offsets_mapping=True, add_special_tokens=False)
        for ser, ids, offsets in zip(part, enc["input_ids"], enc["offset_mapping"]):
            anchors = anchors_from_offsets(ser.text, offsets)
            out.append(Encoded(
                np.asarray([*head, *ids, eos], dtype=np.int64),
                np.concatenate([np.full(len(head), -1, dtype=np.int64), anchors, [len(ser.text)]]).astype(np.int64),
            ))  # BOS anchors at -1; EOS belongs to the answer part
    return out


def check_length(enc: Encoded, max_length: int | None) -> None:
    """ValueError when the causal sequence is longer than ``max_length`` tokens."""
    if max_length is not None and len(enc.input_ids) > max_length:
        raise ValueError(f"sequence of {len(enc.input_ids)} tokens exceeds max_length={max_length}")


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
    anchors = np.asarray(anchors, dtype=np.int64)
    ans = ser.answer_span[0]
    rat = (anchors >= ser.rationale_start) & (anchors < ans)
    w = np.where(anchors >= ans, 1.0, 0.0).astype(np.float32)
    w[rat] = weights.many(anchors[rat])
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


def unknown_tokens(tokenizer: Any, texts: Sequence[str], chunk: int = 1024) -> tuple[int, int, Counter[str]]:
    """(tokens mapped to the unknown token, all tokens, the characters they stood for) over
    ``texts``; (0, tokens, {}) for a tokenizer without an unknown token (byte-level BPE)."""
    unk = tokenizer.unk_token_id
    n_unk, total, chars = 0, 0, Counter[str]()
    for start in range(0, len(texts), chunk):
        part = list(texts[start : start + chunk])
        enc = tokenizer(part, add_special_tokens=False, return_offsets_mapping=unk is not None)
        for i, ids in enumerate(enc["input_ids"]):
            total += len(ids)
            if unk is None:
                continue
            for tok, (a, b) in zip(ids, enc["offset_mapping"][i]):
                if tok == unk:
                    n_unk += 1
                    chars[part[i][a:b]] += 1
    return n_unk, total, chars
