"""A pre-trained base for the offline tiny student, built once and cached.

``student.pretrain`` in a recipe (with ``student.model: tiny:llama``) replaces the random
initialisation by a short next-token pre-training on :mod:`kpod.data.pretrain_corpus`, a corpus
that is not the distillation data (arithmetic facts, plain sentences about quantities, generic
sentences). The tokenizer is trained on that corpus too, so the base depends only on the
``student`` section, never on the recipe's data or seed: every offline recipe (std_cot, kpod_full,
the ablations, answer_only) and every seed starts from the same weights, as the paper's students
start from one pre-trained checkpoint.

Cache: ``$KPOD_CACHE/pretrained/<key>/`` holds the model (``save_pretrained``), the tokenizer and
``base.json`` (what it was built from, the final loss, the build time), then the digest of every
file (``kpod_digest.json``, checked on each use: a damaged base is rebuilt). The key hashes the tiny
config, the tokenizer config, the pre-training params, :data:`CORPUS_VERSION` and
:data:`RECIPE_VERSION`. Written atomically: a crash mid-build leaves no entry a later run trusts.
Rebuilding on the same machine with the same torch build and thread count gives the same bytes
(tests/models/test_pretrain.py); across machines the float kernels may differ, so it is not promised.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from kpod.cache import build_dir, fingerprint, verified_dir
from kpod.data.pretrain_corpus import CORPUS_VERSION, pretraining_texts
from kpod.data.tokenize import train_tokenizer
from kpod.models.tiny import build_tiny

#: bump when the pre-training loop changes what it produces
RECIPE_VERSION = 1


def base_key(kind: str, tiny: Any, tokenizer: Any, pretrain: Any) -> str:
    """Cache key of a pre-trained base: every input that changes its bytes."""
    doc = {
        "kind": kind,
        "tiny": tiny.model_dump(),
        "tokenizer": tokenizer.model_dump(),
        "pretrain": pretrain.model_dump(),
        "corpus_version": CORPUS_VERSION,
        "recipe_version": RECIPE_VERSION,
        "torch": torch.__version__.split("+")[0],
    }
    digest = fingerprint("pretrained", doc)[:24]
    return f"{kind.replace(':', '-')}-{digest}"


def _packed_rows(tokenizer: Any, texts: list[str], seq_len: int) -> torch.Tensor:
    """Documents as ``<s> text </s>``, concatenated and cut into rows of ``seq_len`` tokens."""
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    stream: list[int] = []
    for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        stream.extend([bos, *ids, eos])
    n_rows = len(stream) // seq_len
    if n_rows == 0:
        raise ValueError(f"student.pretrain: corpus of {len(stream)} tokens is shorter than seq_len={seq_len}")
    return torch.tensor(stream[: n_rows * seq_len], dtype=torch.long).view(n_rows, seq_len)


def pretrain_tiny(kind: str, tiny: Any, tokenizer_cfg: Any, pretrain: Any, out_dir: str) -> dict[str, Any]:
    """Build and pre-train a tiny student, saving model and tokenizer to ``out_dir``."""
    if kind != "tiny:llama":
        raise ValueError(f"student.pretrain: pre-training is implemented for tiny:llama, not {kind!r}")
    t0 = time.perf_counter()
    texts = pretraining_texts(
        pretrain.documents, seed=pretrain.seed, max_value=pretrain.max_value, max_operand=pretrain.max_operand,
        corpus=pretrain.corpus,
    )
    tok = train_tokenizer(texts, tokenizer_cfg.vocab_size)
    rows = _packed_rows(tok, texts, pretrain.seq_len)
    torch.manual_seed(pretrain.seed)
    model = build_tiny(kind, tiny, tok)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=pretrain.lr, weight_decay=0.0)
    warm = max(1, pretrain.steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.1, 1.0 - (s - warm) / max(1, pretrain.steps - warm)))
    )
    g = torch.Generator().manual_seed(pretrain.seed)
    losses: list[float] = []
    for _ in range(pretrain.steps):
        idx = torch.randint(0, rows.shape[0], (pretrain.batch_size,), generator=g)
        batch = rows[idx]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    info = {
        "kind": kind,
        "documents": len(texts),
        "rows": int(rows.shape[0]),
        "tokens_seen": pretrain.steps * pretrain.batch_size * pretrain.seq_len,
        "first_loss": round(losses[0], 4),
        "final_loss": round(sum(losses[-20:]) / len(losses[-20:]), 4),
        "seconds": round(time.perf_counter() - t0, 1),
        "pretrain": pretrain.model_dump(),
        "corpus_version": CORPUS_VERSION,
    }
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    Path(out_dir, "base.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def base_path(student_cfg: Any, cache_root: Path) -> Path:
    """Where the recipe's pre-trained base is (or will be) cached."""
    return cache_root / "pretrained" / base_key(
        student_cfg.model, student_cfg.tiny, student_cfg.tokenizer, student_cfg.pretrain
    )


def pretrained_base_dir(student_cfg: Any, cache_root: Path) -> tuple[Path, bool]:
    """The cached base's directory, built first if missing; returns ``(path, built_now)``."""
    path = base_path(student_cfg, cache_root)
    if verified_dir(path):  # every file checked against its digest; a damaged base is rebuilt
        return path, False

    def build(tmp: Path) -> None:
        pretrain_tiny(student_cfg.model, student_cfg.tiny, student_cfg.tokenizer, student_cfg.pretrain, str(tmp))

    # False: a parallel run (kpod ablate --jobs) finished it first, and its copy is kept
    return path, build_dir(path, build, "base.json")
