"""kpod's on-disk caches: where they live, how an entry's key is made, how an entry is written.

Every cache (token weights, step difficulties, the pre-trained tiny base, de-quantized GGUF
checkpoints) lives under :func:`cache_root` and follows the same three rules:

* **Keys are content fingerprints.** :func:`fingerprint` is the sha256 of the canonical JSON
  (sorted keys, no whitespace) of everything that changes the entry's bytes; tensors and models
  enter it as digests of their raw bytes (:func:`tensor_digest`, :func:`model_digest`), so a
  changed weight never hits another model's entry.
* **A file entry is written whole or not at all** (:func:`write_file`: a unique temporary name,
  fsync, rename), so a crash never leaves a half file a later run would trust.
* **A directory entry is built aside and renamed into place** (:func:`build_dir`), with a marker
  file written last; two processes building the same entry both succeed, the first copy wins.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from kpod.runs import atomic_write_text, unique_tmp


def cache_root() -> Path:
    """``$KPOD_CACHE``, default ``~/.cache/kpod``."""
    return Path(os.environ.get("KPOD_CACHE", Path.home() / ".cache" / "kpod"))


def fingerprint(*parts: Any) -> str:
    """sha256 (hex) of the canonical JSON of ``parts``; objects JSON cannot hold enter as ``str``."""
    doc = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(doc.encode("utf-8")).hexdigest()


def _update_with_tensor(h: Any, t: torch.Tensor) -> None:
    t = t.detach()
    h.update(f"{t.dtype}\x00{tuple(t.shape)}\x00".encode())
    h.update(t.reshape(-1).contiguous().cpu().view(torch.uint8).numpy().tobytes())


def tensor_digest(t: torch.Tensor) -> str:
    """sha256 (hex) of a tensor's dtype, shape and raw bytes."""
    h = hashlib.sha256()
    _update_with_tensor(h, t)
    return h.hexdigest()


def model_digest(model: Any) -> str:
    """sha256 (hex) over every parameter and buffer (name, dtype, shape, raw bytes), streamed
    tensor by tensor: any change to any weight changes it (about 1 s per 500 MB on one core)."""
    h = hashlib.sha256()
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        h.update(f"{name}\x00".encode())
        _update_with_tensor(h, t)
    return h.hexdigest()


def write_file(path: Path, text: str) -> None:
    """Write a cache file atomically (unique temporary name, fsync, rename); parent made if missing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)


def build_dir(path: Path, build: Callable[[Path], None], marker: str) -> bool:
    """Build the directory entry ``path``: ``build(tmp)`` fills a fresh temporary directory and
    writes ``marker`` inside it last; the directory is then renamed to ``path``.

    Returns False when another process finished ``path`` first (its copy is kept, ours removed).
    A failed build leaves nothing behind.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = unique_tmp(path)
    try:
        build(tmp)
        if not (tmp / marker).is_file():
            raise RuntimeError(f"cache entry {path}: the build wrote no {marker}")
        if (path / marker).is_file():  # a parallel build (kpod ablate --jobs) finished first
            return False
        try:
            os.rename(tmp, path)
        except OSError:
            if not (path / marker).is_file():  # not a lost race: a real failure
                raise
            return False
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return True
