"""Step difficulty (paper Eq. 8; docs/method.md, 'Progressive distillation').

``d_k = −Σ_{j∈step k} ŵ_j log P(r_j | r_<j, x; θ_s)`` under the student **as initialised**,
teacher-forced in fp32 on the exact training serialisation with the full rationale (c = 0).
``ŵ`` normalises the significance weights within the step: ``softmax`` (the paper, default),
``mean`` (uniform; the w.o.-sig-dif ablation) or ``normalized`` (w / Σw). All three sum to 1, so
``d_k`` is a weighted mean NLL in nats and long steps are not harder for being long.
Computed once; cached by a fingerprint of model, tokenizer, template, text, weights, mode and
whether the pass was packed (``train.packing``: causal students, padding-free, same values to
float rounding) or chunked (``train.loss_chunk_tokens``: the LM head and log-softmax run a chunk of
step tokens at a time, never on the ``[batch, tokens, vocab]`` logits; same values to float rounding).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from kpod.cache import fingerprint, model_digest, read_verified, write_verified
from kpod.data.packing import pack_examples, pack_rows, unpack_targets
from kpod.data.padding import pad_batch, pad_to
from kpod.data.records import Record, records_digest
from kpod.data.template import PromptTemplate, Serialized
from kpod.data.tokenize import IGNORE_INDEX, CharWeights, encode_causal_many, encode_seq2seq
from kpod.losses.base import per_token_nll
from kpod.losses.chunked import head_returns_hidden, linear_token_nll

WithinStep = Literal["softmax", "mean", "normalized"]


def normalise_within_step(w: np.ndarray, mode: str) -> np.ndarray:
    """ŵ for one step's token weights ``w`` (sums to 1)."""
    if len(w) == 0:
        return w
    if mode == "softmax":
        e = np.exp(w - w.max())
        return e / e.sum()
    if mode == "mean":
        return np.full(len(w), 1.0 / len(w))
    if mode == "normalized":
        s = w.sum()
        return w / s if s > 0 else np.full(len(w), 1.0 / len(w))
    raise ValueError(f"difficulty.within_step: unknown mode {mode!r}")


def step_difficulty_from_nll(
    nll: np.ndarray, anchors: np.ndarray, steps: tuple[tuple[int, int], ...], weights: CharWeights, mode: str
) -> list[float]:
    """Eq. 8 for one example: per-token NLLs and anchors (absolute chars) → ``d_k`` per step."""
    out = []
    for s, e in steps:
        idx = np.nonzero((anchors >= s) & (anchors < e))[0]
        if len(idx) == 0:
            raise ValueError(f"step at chars {s}:{e} has no tokens")
        w = np.asarray([weights(int(anchors[i])) for i in idx], dtype=np.float64)
        out.append(float((normalise_within_step(w, mode) * nll[idx]).sum()))
    return out


def difficulty_key(
    model: Any, tokenizer: Any, template: PromptTemplate, records: list[Record], weights: Any, mode: str,
    packed: bool = False,
    chunked: bool = False,
) -> str:
    """Fingerprint of everything Eq. 8 reads: every weight of the model, the vocabulary, the
    template, the records' text and their token weights, the within-step mode; and whether the
    pass was packed or chunked (each changes float summation order, so the last bits: a cached
    result is never another path's). A padded full-logits pass keeps the key it had before packing
    and chunking existed."""
    ordered = sorted(records, key=lambda r: r.sample_id)
    spans = [(weights or {}).get(r.sample_id) for r in ordered]
    parts = ["difficulty", model_digest(model), len(tokenizer), repr(template), records_digest(ordered), spans, mode]
    return fingerprint(*parts, *(["packed"] if packed else []), *(["chunked"] if chunked else []))[:24]


@torch.no_grad()
def compute_difficulties(
    model: Any,
    tokenizer: Any,
    is_encoder_decoder: bool,
    records: list[Record],
    template: PromptTemplate,
    weights: dict[str, list[tuple[int, int, float]]] | None,
    mode: str = "softmax",
    batch_size: int = 64,
    device: torch.device | None = None,
    cache_dir: Path | None = None,
    packing: bool = False,
    pack_rows_of: int | None = 1,
    chunk_tokens: int = 0,
) -> dict[str, list[float]]:
    """``{sample_id: [d_1, …, d_n]}`` for every record with steps (Eq. 8).

    ``packing`` (causal students whose attention keeps packed sequences apart; the caller checks,
    kpod/engine/fastpath.py): the teacher-forced pass runs padding-free (:func:`_packed_nlls`),
    giving the padded pass's difficulties to float rounding.

    ``chunk_tokens`` > 0 (a student whose LM head is a plain linear layer; the caller checks): the
    head and the log-softmax run on that many tokens at a time and only at the tokens Eq. 8 reads
    (:func:`kpod.losses.chunked.linear_token_nll`), so the prompt and the answer sentence get no
    logits and no ``[batch, tokens, vocab]`` tensor is built (SmolLM2, vocab 49k, 64 × 512 tokens:
    6.4 GB of fp32 logits otherwise)."""
    if packing and is_encoder_decoder:
        raise ValueError("difficulty: packing needs a causal (decoder-only) student")
    device = device or torch.device("cpu")
    path = None
    if cache_dir is not None:
        key = difficulty_key(model, tokenizer, template, records, weights, mode, packing, chunk_tokens > 0)
        path = cache_dir / "difficulty" / f"{key}.json"
        cached = read_verified(path)  # a damaged entry is reported, removed and computed again
        if cached is not None:
            return {k: [float(x) for x in v] for k, v in json.loads(cached).items()}
    was_training = model.training
    model.eval()
    model.to(device)
    todo = sorted((r for r in records if r.steps), key=lambda r: len(r.rationale))
    sers = [template.serialize(r) for r in todo]
    if packing:
        nlls = _packed_nlls(model, tokenizer, sers, batch_size, pack_rows_of, device, chunk_tokens)
    else:
        nlls = _padded_nlls(model, tokenizer, is_encoder_decoder, sers, batch_size, device, chunk_tokens)
    out: dict[str, list[float]] = {}
    for r, ser, (nll, anchors) in zip(todo, sers, nlls):
        off = ser.rationale_start
        cw = CharWeights([(s + off, e + off, w) for s, e, w in (weights or {}).get(r.sample_id, [])] or None)
        out[r.sample_id] = step_difficulty_from_nll(nll, anchors, ser.steps, cw, mode)
    model.train(was_training)
    if path is not None:
        write_verified(path, json.dumps(out))  # unique temp name: parallel runs may share the cache
    return out


TokenNLLs = list[tuple[np.ndarray, np.ndarray]]  # per sequence: each target token's NLL and its anchor


def step_targets(labels: list[int], anchors: list[int], steps: tuple[tuple[int, int], ...]) -> list[int]:
    """``labels`` with every token Eq. 8 does not read (anchored outside all steps: the prompt, the
    answer sentence, special tokens) set to IGNORE_INDEX, so the chunked pass computes no logits there."""
    a = np.asarray(anchors)
    inside = np.zeros(len(a), dtype=bool)
    for s, e in steps:
        inside |= (a >= s) & (a < e)
    return [t if keep else IGNORE_INDEX for t, keep in zip(labels, inside.tolist())]


def _token_nll(
    model: Any, inputs: dict[str, torch.Tensor], labels: torch.Tensor, is_encoder_decoder: bool, chunk_tokens: int
) -> torch.Tensor:
    """Teacher-forced NLL of every target of ``labels`` (``[B, T']``, fp32; 0 where there is none):
    from the full logits, or (``chunk_tokens`` > 0) from the hidden states a chunk at a time."""
    if chunk_tokens > 0:
        with head_returns_hidden(model) as head:
            hidden = model(**inputs).logits
        nll, _, _ = linear_token_nll(hidden, head.weight, head.bias, labels, is_encoder_decoder, chunk_tokens)
        return nll
    nll, _, _ = per_token_nll(model(**inputs).logits.float(), labels, is_encoder_decoder)
    return nll


def teacher_forced_nlls(
    model: Any, tokenizer: Any, is_encoder_decoder: bool, sers: list[Serialized], batch_size: int, device: torch.device,
) -> TokenNLLs:
    """Per serialized sequence: every target token's teacher-forced NLL and its anchor character in
    ``ser.text`` (the padded pass of Eq. 8, for other readers such as :mod:`kpod.fluency`)."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = _padded_nlls(model, tokenizer, is_encoder_decoder, sers, batch_size, device)
    model.train(was_training)
    return out


def _padded_nlls(
    model: Any, tokenizer: Any, is_encoder_decoder: bool, sers: list[Serialized], batch_size: int, device: torch.device,
    chunk_tokens: int = 0,
) -> TokenNLLs:
    """Teacher-forced NLLs of every target token, ``batch_size`` sequences per padded batch."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out: TokenNLLs = []
    for i in range(0, len(sers), batch_size):
        chunk = sers[i : i + batch_size]
        if is_encoder_decoder:
            encs = [encode_seq2seq(tokenizer, s, s.cut(0)) for s in chunk]
            src = [e.input_ids for e in encs]
            tgt = [e.labels_ids for e in encs]
            anchors = [e.label_anchors for e in encs]
        else:
            encs = encode_causal_many(tokenizer, chunk)
            tgt = [e.input_ids for e in encs]
            anchors = [e.anchors for e in encs]
        labels = pad_to(tgt, -100)
        if is_encoder_decoder:
            ids, att = pad_batch(src, pad)
            dec = model.prepare_decoder_input_ids_from_labels(labels=labels.to(device))
            inputs = {"input_ids": ids.to(device), "attention_mask": att.to(device), "decoder_input_ids": dec}
        else:
            inputs = {"input_ids": labels.clamp_min(0).to(device), "attention_mask": (labels != -100).long().to(device)}
        if chunk_tokens > 0:  # targets only where Eq. 8 reads them (the inputs above keep every token)
            labels = pad_to([step_targets(t, a, s.steps) for t, a, s in zip(tgt, anchors, chunk)], -100)
        nll = _token_nll(model, inputs, labels.to(device), is_encoder_decoder, chunk_tokens).cpu().numpy()
        sl = slice(0, None) if is_encoder_decoder else slice(1, None)
        for b in range(len(chunk)):
            a = np.asarray(anchors[b])[sl][: nll.shape[1]]
            out.append((nll[b, : len(a)], a))
    return out


def _packed_nlls(
    model: Any, tokenizer: Any, sers: list[Serialized], batch_size: int, rows_of: int | None, device: torch.device,
    chunk_tokens: int = 0,
) -> TokenNLLs:
    """:func:`_padded_nlls` for a causal student, padding-free (:mod:`kpod.data.packing`).

    Every sequence of the pass is packed at once, first-fit decreasing into rows of ``rows_of`` ×
    the longest sequence (``None``: ``batch_size`` × the longest, for varlen attention kernels):
    a sequence's NLLs do not depend on its neighbours, and the padded pass's length-sorted
    batches would leave nothing to fill a row with. A forward pass takes whole rows until it
    holds ``batch_size`` sequences (rows of 1× the longest: never more positions than the padded
    pass's widest batch)."""
    if not sers:
        return []
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    encs = encode_causal_many(tokenizer, sers)
    lengths = [len(e.input_ids) for e in encs]
    width = max(lengths) * (batch_size if rows_of is None else min(rows_of, batch_size))
    out: list[tuple[np.ndarray, np.ndarray]] = [(np.zeros(0), np.zeros(0))] * len(encs)
    for rows in _passes(pack_rows(lengths, width), batch_size):
        members = [j for row in rows for j in row]
        local = {j: k for k, j in enumerate(members)}
        exs = [{"input_ids": encs[j].input_ids,
                "labels": step_targets(encs[j].input_ids, encs[j].anchors, sers[j].steps) if chunk_tokens > 0
                else encs[j].input_ids} for j in members]
        batch = pack_examples(exs, [str(j) for j in members], pad, width, [[local[j] for j in row] for row in rows])
        inputs = {"input_ids": batch["input_ids"].to(device), "position_ids": batch["position_ids"].to(device),
                  "use_cache": False}
        nll = _token_nll(model, inputs, batch["labels"].to(device), False, chunk_tokens)
        nll = unpack_targets(nll, batch, max(lengths[j] for j in members)).cpu().numpy()
        for k, j in enumerate(members):
            out[j] = (nll[k, : lengths[j] - 1], encs[j].anchors[1:])
    return out


def _passes(rows: list[list[int]], batch_size: int) -> list[list[list[int]]]:
    """Consecutive packed rows grouped into forward passes of about ``batch_size`` sequences
    (whole rows; a pass closes once it holds ``batch_size`` or more)."""
    passes: list[list[list[int]]] = [[]]
    held = 0
    for row in rows:
        if held >= batch_size:
            passes.append([])
            held = 0
        passes[-1].append(row)
        held += len(row)
    return passes if rows else []
