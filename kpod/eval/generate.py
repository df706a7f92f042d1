"""Batched greedy generation from the template's inference prefix, answer extraction, accuracy.

Causal students decode with kpod's own greedy loop (:func:`greedy_causal`): prompts sorted by
token length so a batch holds similar lengths, a KV cache, and every sequence leaves the batch as
soon as it is done (EOS, or — ``stop_at_answer`` — a complete "the answer is …", checked every 8
steps), so the batch shrinks instead of decoding padding until its longest member ends. Greedy decisions are those of
``model.generate`` (same positions, masks and cache; tests/eval/test_generation.py). Seq2seq students
use ``model.generate`` on length-sorted batches. ``eval.backend: vllm`` generates through a vLLM
engine instead (:mod:`kpod.eval.vllm_backend`, passed to :func:`evaluate_split` as ``generator``).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Sequence
from typing import Any

import torch

from kpod.data.padding import pad_batch
from kpod.data.records import Record
from kpod.data.template import PromptTemplate

# "the answer is" (as the extractor reads it), then the answer, then a character that ends it
_ANSWER_DONE = re.compile(r"the\s+answer\s+is\s*:?\s*\S+\s", re.IGNORECASE)


_ANSWER_EVERY = 8  # steps between answer checks
_ANSWER_TAIL = 48  # tokens decoded for the check: "the answer is", a long answer and _ANSWER_EVERY more


def answer_complete(text: str) -> bool:
    """Has the output stated an answer in full ("… the answer is 42" and one more character)?"""
    return _ANSWER_DONE.search(text) is not None


def causal_prompt_ids(tokenizer: Any, prompts: Sequence[str]) -> list[list[int]]:
    """A causal student's prompt token ids, as every causal backend (kpod, hf, vllm) feeds them:
    BOS first when the tokenizer has one distinct from EOS, no other special tokens."""
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    prefix = [bos] if bos is not None and bos != eos else []
    return [prefix + x for x in tokenizer(list(prompts), add_special_tokens=False)["input_ids"]]


class CausalStream:
    """A left-padded batch of prompts of a causal LM, fed one token per row per step (KV cache).
    Positions count real tokens only, as ``model.generate`` builds them. :func:`greedy_causal` and
    SCOTT's contrastive decoder (kpod.teach.contrastive) step through it."""

    def __init__(self, model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
        self.model, self.mask, self.cache = model, attention_mask, None
        self.pending = input_ids
        self.positions = (attention_mask.cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)
        # only the last position's logits are read: the prompt's full-vocabulary logits are never
        # built (at vocab 49k, batch 128 and 100-token prompts they would be 2.5 GB of fp32)
        self.last_only = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}

    def logits(self) -> torch.Tensor:
        out = self.model(input_ids=self.pending, attention_mask=self.mask, position_ids=self.positions,
                         cache=self.cache, use_cache=True, **self.last_only)
        self.cache = out.cache
        return out.logits[:, -1, :]

    def keep(self, rows: torch.Tensor) -> None:
        """Only these rows go on (finished ones leave the batch and the cache)."""
        self.cache.batch_select_indices(rows)
        self.mask = self.mask[rows]

    def feed(self, tokens: torch.Tensor) -> None:
        self.mask = torch.cat([self.mask, self.mask.new_ones((len(tokens), 1))], dim=1)
        self.pending = tokens[:, None]
        self.positions = self.mask.sum(-1, keepdim=True) - 1


@torch.no_grad()
def greedy_causal(
    model: Any,
    tokenizer: Any,
    ids: Sequence[Sequence[int]],
    max_new_tokens: int,
    device: torch.device,
    stop_at_answer: bool = False,
) -> list[list[int]]:
    """Greedy continuations (token ids, EOS included when produced) of left-padded ``ids``.

    Positions, masks and the cache are built as ``model.generate`` builds them (position = number
    of real tokens before, left padding masked), so each step's argmax is the one it would take.
    A finished sequence is dropped from the batch and from the cache at once."""
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    pad = pad if pad is not None else eos
    n = len(ids)
    input_ids, attention = pad_batch(ids, pad, side="left")
    stream = CausalStream(model, input_ids.to(device), attention.to(device))
    logits = stream.logits()
    alive = torch.arange(n)  # rows of the current batch → original sequence index
    outputs: list[list[int]] = [[] for _ in range(n)]
    for step in range(max_new_tokens):
        nxt = logits.argmax(-1)
        tokens = nxt.tolist()
        keep = []
        for row, (orig, tok) in enumerate(zip(alive.tolist(), tokens)):
            outputs[orig].append(tok)
            # the answer check decodes text (≈ 50 µs a call), so it runs every _ANSWER_EVERY steps
            # on the newest _ANSWER_TAIL tokens: a sequence stops at most _ANSWER_EVERY − 1 tokens
            # after its answer is complete (EOS is checked every step)
            done = tok == eos or (
                stop_at_answer
                and step % _ANSWER_EVERY == _ANSWER_EVERY - 1
                and answer_complete(tokenizer.decode(outputs[orig][-_ANSWER_TAIL:], skip_special_tokens=True))
            )
            if not done:
                keep.append(row)
        if not keep or step == max_new_tokens - 1:
            break
        if len(keep) < len(tokens):  # finished sequences leave the batch and the cache
            sel = torch.tensor(keep, device=device)
            stream.keep(sel)
            nxt, alive = nxt[sel], alive[torch.tensor(keep)]
        stream.feed(nxt)
        logits = stream.logits()
    return outputs


@torch.no_grad()
def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    is_encoder_decoder: bool,
    max_new_tokens: int,
    device: torch.device,
    *,
    backend: str = "kpod",
    stop_at_answer: bool = False,
) -> list[str]:
    """Greedy continuations of ``prompts`` (special tokens stripped). ``backend``: ``kpod`` (causal
    students: :func:`greedy_causal`) or ``hf`` (``model.generate``; always for seq2seq)."""
    if backend not in ("kpod", "hf"):
        raise ValueError(f"generation backend {backend!r}: use 'kpod' or 'hf'")
    if not is_encoder_decoder and backend == "kpod":
        gen = greedy_causal(model, tokenizer, causal_prompt_ids(tokenizer, prompts), max_new_tokens, device, stop_at_answer)
        return tokenizer.batch_decode(gen, skip_special_tokens=True)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    if is_encoder_decoder:
        ids = [tokenizer(p, add_special_tokens=False)["input_ids"] + [eos] for p in prompts]
        side = "right"
    else:
        ids = causal_prompt_ids(tokenizer, prompts)
        side = "left"  # decoder-only generation continues from the last real token
    input_ids, attention = pad_batch(ids, pad, side=side)
    width = input_ids.shape[1]
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
    stop_at_answer: bool = True,
    backend: str = "kpod",
    generator: Callable[[Sequence[str]], list[str]] | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Accuracy on one split and one prediction row per sample (keyed by sample_id).

    ``stop_at_answer``: a sequence also stops once it has stated a complete answer (see
    :func:`answer_complete`); its output is then a prefix of the one it would have run on to EOS,
    and the parsed answer differs only if the model would have written a second "the answer is".

    ``generator``: generates in place of ``model`` (which may then be None) — an engine that
    schedules its own batches (:class:`kpod.eval.vllm_backend.VllmGenerator`), so it gets every
    prompt of the split in one call and ``batch_size``, ``device``, ``backend`` and
    ``stop_at_answer`` are not used."""
    was_training = model is not None and model.training
    if model is not None:
        model.eval()
    preds: list[dict[str, Any]] = []
    # sort by prompt length in tokens to reduce padding; output order is restored by sample_id
    all_prompts = [template.prompt(r) for r in records]
    lengths = [len(x) for x in tokenizer(all_prompts, add_special_tokens=False)["input_ids"]] if records else []
    order = sorted(range(len(records)), key=lambda i: (lengths[i], i))
    chunk = max(len(order), 1) if generator is not None else batch_size
    for start in range(0, len(order), chunk):
        batch = [records[i] for i in order[start : start + chunk]]
        prompts = [all_prompts[i] for i in order[start : start + chunk]]
        if generator is not None:
            outputs = generator(prompts)
        else:
            outputs = generate(model, tokenizer, prompts, is_encoder_decoder, max_new_tokens, device,
                               backend=backend, stop_at_answer=stop_at_answer)
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
    if model is not None:
        model.train(was_training)
    index = {r.sample_id: i for i, r in enumerate(records)}
    preds.sort(key=lambda p: index[p["sample_id"]])
    n = len(preds)
    correct = sum(p["correct"] for p in preds)
    return {"accuracy": correct / n if n else 0.0, "count": n, "correct": correct}, preds
