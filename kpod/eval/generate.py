"""Batched greedy generation from the template's inference prefix, answer extraction, accuracy."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from kpod.data.records import Record
from kpod.data.template import PromptTemplate


@torch.no_grad()
def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    is_encoder_decoder: bool,
    max_new_tokens: int,
    device: torch.device,
) -> list[str]:
    """Greedy continuations of ``prompts`` (special tokens stripped)."""
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    if is_encoder_decoder:
        ids = [tokenizer(p, add_special_tokens=False)["input_ids"] + [eos] for p in prompts]
        side = "right"
    else:
        bos = tokenizer.bos_token_id
        prefix = [bos] if bos is not None and bos != eos else []
        ids = [prefix + tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        side = "left"  # decoder-only generation continues from the last real token
    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), pad, dtype=torch.long)
    attention = torch.zeros((len(ids), width), dtype=torch.long)
    for i, x in enumerate(ids):
        if side == "left":
            input_ids[i, width - len(x) :] = torch.tensor(x)
            attention[i, width - len(x) :] = 1
        else:
            input_ids[i, : len(x)] = torch.tensor(x)
            attention[i, : len(x)] = 1
    out = model.generate(
        input_ids=input_ids.to(device),
        attention_mask=attention.to(device),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        pad_token_id=pad,
        eos_token_id=eos,
    )
    gen = out if is_encoder_decoder else out[:, width:]
    return tokenizer.batch_decode(gen, skip_special_tokens=True)


def evaluate_split(
    model: Any,
    tokenizer: Any,
    records: Sequence[Record],
    template: PromptTemplate,
    extractor: Any,
    is_encoder_decoder: bool,
    *,
    batch_size: int,
    max_new_tokens: int,
    device: torch.device,
    split: str,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Accuracy on one split and one prediction row per sample (keyed by sample_id)."""
    was_training = model.training
    model.eval()
    preds: list[dict[str, Any]] = []
    # sort by prompt length to reduce padding; output order is restored by sample_id
    order = sorted(range(len(records)), key=lambda i: len(records[i].question))
    for start in range(0, len(order), batch_size):
        batch = [records[i] for i in order[start : start + batch_size]]
        prompts = [template.inference_prefix(r.question) for r in batch]
        outputs = generate(model, tokenizer, prompts, is_encoder_decoder, max_new_tokens, device)
        for r, prompt, text in zip(batch, prompts, outputs):
            parsed = extractor.extract(text)
            preds.append(
                {
                    "sample_id": r.sample_id,
                    "split": split,
                    "prompt": prompt,
                    "output": text,
                    "parsed": parsed,
                    "gold": r.answer,
                    "correct": bool(extractor.is_correct(parsed, r.answer)),
                }
            )
        if on_batch is not None:
            on_batch(len(batch))
    model.train(was_training)
    index = {r.sample_id: i for i, r in enumerate(records)}
    preds.sort(key=lambda p: index[p["sample_id"]])
    n = len(preds)
    correct = sum(p["correct"] for p in preds)
    return {"accuracy": correct / n if n else 0.0, "count": n, "correct": correct}, preds
