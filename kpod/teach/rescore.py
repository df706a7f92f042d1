"""Rescoring: a local causal teacher reads existing rationales (the shipped GPT-3.5 SVAMP ones,
or the testbed's) token by token, without generating, and its top-k distribution at every target
token goes to a :class:`~kpod.data.topk_store.TopKStore` keyed by ``sample_id``.

Each record is serialized with the recipe's template and encoded as kpod encodes a causal
student's sequence (:func:`~kpod.data.tokenize.encode_causal_many`: BOS, text, EOS). The targets
are the tokens from the rationale's start to EOS (rationale, answer sentence, EOS); the teacher's
distribution for target ``t`` is its log-softmax at position ``t − 1``. Offsets are stored as
``[anchor_t, anchor_{t+1})`` relative to the rationale's start (EOS: an empty span at the text's
end), so a student can align by characters. Records already in the store are skipped: an
interrupted scoring pass goes on where it stopped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kpod.data.padding import pad_batch
from kpod.data.records import Record, teacher_key
from kpod.data.template import PromptTemplate
from kpod.data.tokenize import Encoded, encode_causal_many
from kpod.data.topk_store import TokenDistributions, TopKStore


@dataclass
class RescoreReport:
    scored: int = 0
    already_stored: int = 0
    tokens: int = 0


def target_distributions(sample_id: str, enc: Encoded, rationale_start: int, logprobs: torch.Tensor,
                         k: int) -> TokenDistributions:
    """One record's stored view from the teacher's log-probs ``[T, V]`` over its own sequence."""
    anchors = np.asarray(enc.anchors, dtype=np.int64)
    targets = np.nonzero(anchors >= rationale_start)[0]
    targets = targets[targets >= 1]  # position 0 (BOS) has no prediction
    top = torch.topk(logprobs[targets - 1], k, dim=-1)
    mass = top.values.double().exp().sum(-1)
    tail = torch.log(torch.clamp(1.0 - mass, min=1e-12)).float()
    starts = anchors[targets] - rationale_start
    ends = np.append(anchors[targets][1:], anchors[targets][-1]) - rationale_start
    return TokenDistributions(
        sample_id,
        np.asarray(enc.input_ids, dtype=np.int64)[targets].astype(np.int32),
        np.stack([starts, np.maximum(ends, starts)], 1).astype(np.int32),
        top.indices.numpy().astype(np.int32),
        top.values.numpy().astype(np.float16),
        tail.numpy().astype(np.float16),
    )


@torch.no_grad()
def rescore(model: Any, tokenizer: Any, records: Sequence[Record], template: PromptTemplate, store: TopKStore,
            batch_size: int = 8, device: str | torch.device = "cpu") -> RescoreReport:
    """Score every record not yet in ``store`` with the causal ``model`` (teacher forcing, right
    padding, ``batch_size`` sequences at a time; memory: one batch's ``[B, T, V]`` logits)."""
    report = RescoreReport(already_stored=sum(r.sample_id in store for r in records))
    todo = [r for r in records if r.sample_id not in store]
    model.eval()
    for start in range(0, len(todo), batch_size):
        part = todo[start : start + batch_size]
        sers = [template.serialize(r) for r in part]
        encs = encode_causal_many(tokenizer, sers)
        ids, mask = pad_batch([e.input_ids.tolist() for e in encs], tokenizer.pad_token_id or 0)
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
        for row, (r, ser, enc) in enumerate(zip(part, sers, encs)):
            logprobs = torch.log_softmax(logits[row, : len(enc.input_ids)], -1).cpu()
            dist = target_distributions(r.sample_id, enc, ser.rationale_start, logprobs, store.k)
            store.append(dist)
            report.scored += 1
            report.tokens += len(dist.token_ids)
    return report


def scoring_records(records: Sequence[Record]) -> list[Record]:
    """One record per teacher key (:func:`kpod.data.records.teacher_key`), stored under that key:
    Specialized KD's four formats of a question share the zero-shot CoT record's distributions
    (a record without demonstrations is preferred; answer-only formats have none)."""
    chosen: dict[str, Record] = {}
    for r in records:
        key = teacher_key(r)
        if key is None:
            continue
        if key not in chosen or ("demos" in chosen[key].meta and "demos" not in r.meta):
            chosen[key] = r
    return [replace(r, sample_id=key) for key, r in chosen.items()]


def rescore_recipe(recipe: Any, teacher: str, out: Path, k: int = 20, gguf_file: str | None = None,
                   batch_size: int = 8, device: str | None = None) -> dict[str, Any]:
    """``kpod rescore``: the recipe's training rationales (its source, data.format and template)
    scored by the causal model ``teacher`` (hub id, local directory — e.g. a run's ``model/`` —
    or ``pkg:``/GGUF as for students) into the store ``out``. Resumable; returns the counts and
    the store's size."""
    from kpod.data.load import load_data, template_from
    from kpod.models.errors import StudentError
    from kpod.models.student import load_pretrained, resolve_model_name, run_model_dir

    teacher = run_model_dir(resolve_model_name(teacher, "--teacher"))  # a run directory: its model/
    model = load_pretrained(teacher, gguf_file=gguf_file, field="--teacher", gguf_field="--gguf-file")
    if model.is_encoder_decoder:
        raise StudentError(f"--teacher {teacher}: an encoder-decoder teacher is not supported for rescoring (causal only)")
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model.model.to(dev)
    records = scoring_records(load_data(recipe)["train"])
    tokenizer_id = f"{getattr(model.tokenizer, 'name_or_path', '') or teacher} (vocab {len(model.tokenizer)})"
    with TopKStore(out, k=k, teacher=model.source, tokenizer=tokenizer_id) as store:
        report = rescore(model.model, model.tokenizer, records, template_from(recipe), store, batch_size, dev)
    size = sum(p.stat().st_size for p in Path(out).glob("shard-*.bin"))
    tokens = sum(int(row["n"]) for row in store.index.values())
    return {"store": str(out), "k": k, "scored": report.scored, "already_stored": report.already_stored,
            "records": len(store.index), "tokens": tokens, "bytes": size,
            "bytes_per_1000_tokens": round(1000 * size / tokens) if tokens else None}
