"""Step difficulty (paper Eq. 8, spec §4 and §10(e, g)).

``d_k = −Σ_{j∈step k} ŵ_j log P(r_j | r_<j, x; θ_s)`` under the student **as initialised**,
teacher-forced in fp32 on the exact training serialisation with the full rationale (c = 0).
``ŵ`` normalises the significance weights within the step: ``softmax`` (the paper, default),
``mean`` (uniform; the w.o.-sig-dif ablation) or ``normalized`` (w / Σw). All three sum to 1, so
``d_k`` is a weighted mean NLL in nats and long steps are not harder for being long.
Computed once; cached by a fingerprint of model, tokenizer, template, text, weights and mode.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from kpod.cache import fingerprint, model_digest, write_file
from kpod.data.padding import pad_batch, pad_to
from kpod.data.records import Record, records_digest
from kpod.data.template import PromptTemplate
from kpod.data.tokenize import CharWeights, encode_causal_many, encode_seq2seq
from kpod.losses.base import per_token_nll

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


def difficulty_key(model: Any, tokenizer: Any, template: PromptTemplate, records: list[Record], weights: Any, mode: str) -> str:
    """Fingerprint of everything Eq. 8 reads: every weight of the model, the vocabulary, the
    template, the records' text and their token weights, the within-step mode."""
    ordered = sorted(records, key=lambda r: r.sample_id)
    spans = [(weights or {}).get(r.sample_id) for r in ordered]
    return fingerprint(
        "difficulty", model_digest(model), len(tokenizer), repr(template), records_digest(ordered), spans, mode
    )[:24]


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
) -> dict[str, list[float]]:
    """``{sample_id: [d_1, …, d_n]}`` for every record with steps (Eq. 8)."""
    device = device or torch.device("cpu")
    path = None
    if cache_dir is not None:
        path = cache_dir / "difficulty" / f"{difficulty_key(model, tokenizer, template, records, weights, mode)}.json"
        if path.exists():
            return {k: [float(x) for x in v] for k, v in json.loads(path.read_text()).items()}
    was_training = model.training
    model.eval()
    model.to(device)
    todo = sorted((r for r in records if r.steps), key=lambda r: len(r.rationale))
    out: dict[str, list[float]] = {}
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for i in range(0, len(todo), batch_size):
        chunk = todo[i : i + batch_size]
        sers = [template.serialize(r) for r in chunk]
        if is_encoder_decoder:
            encs = [encode_seq2seq(tokenizer, s, s.cut(0)) for s in sers]
            src = [e.input_ids for e in encs]
            tgt = [e.labels_ids for e in encs]
            anchors = [e.label_anchors for e in encs]
        else:
            encs = encode_causal_many(tokenizer, sers)
            tgt = [e.input_ids for e in encs]
            anchors = [e.anchors for e in encs]
        labels = pad_to(tgt, -100)
        if is_encoder_decoder:
            ids, att = pad_batch(src, pad)
            dec = model.prepare_decoder_input_ids_from_labels(labels=labels.to(device))
            logits = model(input_ids=ids.to(device), attention_mask=att.to(device), decoder_input_ids=dec).logits
        else:
            ids = labels.clamp_min(0)
            att = (labels != -100).long()
            logits = model(input_ids=ids.to(device), attention_mask=att.to(device)).logits
        nll, _, sl = per_token_nll(logits.float(), labels.to(device), is_encoder_decoder)
        nll = nll.cpu().numpy()
        for b, (r, ser) in enumerate(zip(chunk, sers)):
            a = np.asarray(anchors[b])[sl][: nll.shape[1]]
            row = nll[b, : len(a)]
            off = ser.rationale_start
            cw = CharWeights([(s + off, e + off, w) for s, e, w in (weights or {}).get(r.sample_id, [])] or None)
            out[r.sample_id] = step_difficulty_from_nll(row, a, ser.steps, cw, mode)
    model.train(was_training)
    if path is not None:
        write_file(path, json.dumps(out))  # unique temp name: parallel runs may share the cache
    return out
