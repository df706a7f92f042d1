"""On-policy distillation (GKD, Agarwal et al., ICLR 2024): for a share λ of each micro-batch's
samples the student writes the completion itself, with its weights of this step, and the loss is
the divergence from an online teacher on the student's own tokens.

Which samples roll out, and the random numbers each one samples with, are a function of
``(seed, optimizer step, sample_id)`` only: a sample rolls out (and writes the same text) whatever
its batch-mates, its rank, or a resume, as kpod's batch order is a function of (seed, epoch).

What the student continues is everything before the sample's first target token: the prompt, and
under a curriculum the given steps, which stay the teacher's text (the student writes the rest).
A rolled-out row's targets are its generated tokens (EOS included when produced), each weighing 1:
the keypoint weights belong to the teacher's rationale text, which the row no longer has. The row
is padded like the others; ``batch["on_policy"]`` marks it (``[B]`` bool).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import torch

from kpod.data.packing import CHAR_POS_PAD
from kpod.data.padding import pad_batch
from kpod.data.tokenize import IGNORE_INDEX
from kpod.eval.generate import CausalStream


def _unit(*parts: object) -> float:
    """A number in [0, 1) that depends on ``parts`` only (not on Python's per-process hash seed)."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2.0**64


def rollout_rows(sample_ids: Sequence[str], share: float, seed: int, step: int) -> list[int]:
    """The rows whose sample rolls out at optimizer step ``step`` (each with probability ``share``)."""
    return [i for i, sid in enumerate(sample_ids) if _unit("rollout", seed, step, sid) < share]


def sample_seed(sample_id: str, seed: int, step: int) -> int:
    """The seed of ``sample_id``'s own random generator at ``step``."""
    return int(_unit("sample", seed, step, sample_id) * 2**62)


@torch.no_grad()
def sample_continuations(model: Any, prompts: Sequence[Sequence[int]], eos: int, pad: int, max_new_tokens: int,
                         temperature: float, seeds: Sequence[int]) -> list[list[int]]:
    """Each prompt's continuation from ``model`` (EOS included when produced): sampled at
    ``temperature`` with a generator per row seeded by ``seeds`` (0: greedy). One left-padded batch
    with a KV cache; a finished row leaves it."""
    device = next(model.parameters()).device
    ids, mask = pad_batch([list(p) for p in prompts], pad, side="left")
    stream = CausalStream(model, ids.to(device), mask.to(device))
    gens = [torch.Generator(device="cpu").manual_seed(s) for s in seeds]
    alive = list(range(len(prompts)))
    out: list[list[int]] = [[] for _ in prompts]
    for step in range(max_new_tokens):
        logits = stream.logits().float()
        if temperature == 0:
            nxt = logits.argmax(-1).cpu()
        else:
            probs = torch.softmax(logits / temperature, -1).cpu()
            nxt = torch.stack([torch.multinomial(probs[i], 1, generator=gens[orig]).squeeze(0)
                               for i, orig in enumerate(alive)])
        keep = []
        for i, (orig, tok) in enumerate(zip(alive, nxt.tolist())):
            out[orig].append(tok)
            if tok != eos:
                keep.append(i)
        if not keep or step == max_new_tokens - 1:
            break
        if len(keep) < len(alive):
            stream.keep(torch.tensor(keep, device=device))
            nxt, alive = nxt[keep], [alive[i] for i in keep]
        stream.feed(nxt.to(device))
    return out


def _row(batch: dict[str, Any], r: int) -> dict[str, torch.Tensor]:
    """Row ``r`` of a padded causal batch without its padding."""
    n = int(batch["attention_mask"][r].sum())
    return {k: batch[k][r, :n] for k in ("input_ids", "labels", "weights", "is_answer", "answer_value", "char_pos")}


def _first_target(row: dict[str, torch.Tensor]) -> int:
    return int((row["labels"] != IGNORE_INDEX).nonzero()[0])


def _prompt(row: dict[str, torch.Tensor]) -> list[int]:
    return row["input_ids"][: _first_target(row)].tolist()


def _rolled(row: dict[str, torch.Tensor], generated: list[int]) -> dict[str, torch.Tensor]:
    """``row`` with its targets replaced by the student's ``generated`` tokens (weight 1 each)."""
    t0 = _first_target(row)
    gen = torch.tensor(generated, dtype=row["input_ids"].dtype)
    n = len(generated)
    return {
        "input_ids": torch.cat([row["input_ids"][:t0], gen]),
        "labels": torch.cat([torch.full((t0,), IGNORE_INDEX, dtype=row["labels"].dtype), gen.to(row["labels"].dtype)]),
        "weights": torch.cat([torch.zeros(t0), torch.ones(n)]).to(row["weights"].dtype),
        "is_answer": torch.zeros(t0 + n, dtype=torch.bool),
        "answer_value": torch.zeros(t0 + n, dtype=torch.bool),
        "char_pos": torch.full((t0 + n,), CHAR_POS_PAD, dtype=row["char_pos"].dtype),
    }


def prompt_of(batch: dict[str, Any], r: int) -> list[int]:
    """Row ``r``'s tokens before its first target: what the student continues."""
    return _prompt(_row(batch, r))


def rollout_batch(batch: dict[str, Any], model: Any, tokenizer: Any, share: float, seed: int, step: int,
                  max_new_tokens: int, temperature: float) -> dict[str, Any]:
    """``batch`` (padded, causal) with the rows of :func:`rollout_rows` continued by ``model``."""
    rows = rollout_rows(batch["sample_ids"], share, seed, step)
    out = dict(batch, on_policy=torch.zeros(len(batch["sample_ids"]), dtype=torch.bool))
    if not rows:
        return out
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    pad = pad if pad is not None else eos
    parts = [_row(batch, r) for r in range(len(batch["sample_ids"]))]
    prompts = [_prompt(parts[r]) for r in rows]
    was_training = model.training
    model.eval()
    try:
        generated = sample_continuations(model, prompts, eos, pad, max_new_tokens, temperature,
                                         [sample_seed(batch["sample_ids"][r], seed, step) for r in rows])
    finally:
        model.train(was_training)
    for r, g in zip(rows, generated):
        parts[r] = _rolled(parts[r], g)
    out["input_ids"], out["attention_mask"] = pad_batch([p["input_ids"].tolist() for p in parts], pad)
    fills = {"labels": IGNORE_INDEX, "weights": 0.0, "is_answer": False, "answer_value": False, "char_pos": CHAR_POS_PAD}
    width = out["input_ids"].shape[1]
    for key, fill in fills.items():
        col = torch.full((len(parts), width), fill, dtype=parts[0][key].dtype)
        for i, p in enumerate(parts):
            col[i, : len(p[key])] = p[key]
        out[key] = col
    out["on_policy"][rows] = True
    return out
