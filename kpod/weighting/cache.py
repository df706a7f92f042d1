"""On-disk cache of token weights, keyed by data content + strategy params + seed (+ model hash).

Location: ``$KPOD_CACHE`` (default ``~/.cache/kpod``) ``/weights/<key>.jsonl``; one line per
sample: ``{"sample_id": ..., "spans": [[start, end, w], ...]}``. Written atomically, so a crash
never leaves a half file that a later run would trust.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from kpod.data.records import Record
from kpod.runs import unique_tmp
from kpod.weighting.base import CharSpanWeights


def cache_root() -> Path:
    return Path(os.environ.get("KPOD_CACHE", Path.home() / ".cache" / "kpod"))


def records_fingerprint(records: Iterable[Record]) -> str:
    h = hashlib.sha256()
    for r in sorted(records, key=lambda r: r.sample_id):
        for part in (r.sample_id, r.question, r.rationale, r.answer, json.dumps(r.steps)):
            h.update(part.encode("utf-8"))
            h.update(b"\x00")
    return h.hexdigest()


def cache_key(records: list[Record], strategy: str, params: dict[str, Any], seed: int, extra: str = "") -> str:
    h = hashlib.sha256()
    h.update(records_fingerprint(records).encode())
    h.update(strategy.encode())
    h.update(json.dumps(params, sort_keys=True, default=str).encode())
    h.update(str(seed).encode())
    h.update(extra.encode())
    return f"{strategy}-{h.hexdigest()[:24]}"


def cache_path(key: str, root: Path | None = None) -> Path:
    return (root or cache_root()) / "weights" / f"{key}.jsonl"


def save_weights(path: Path, weights: CharSpanWeights, meta: dict[str, Any] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = unique_tmp(path)  # parallel runs with the same key must not share a temp file
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(json.dumps({"meta": meta or {}}) + "\n")
        for sid in sorted(weights):
            f.write(json.dumps({"sample_id": sid, "spans": [list(s) for s in weights[sid]]}) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_weights(path: Path) -> tuple[CharSpanWeights, dict[str, Any]]:
    weights: CharSpanWeights = {}
    meta: dict[str, Any] = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            obj = json.loads(line)
            if n == 1 and "meta" in obj:
                meta = obj["meta"]
                continue
            weights[obj["sample_id"]] = [(int(s), int(e), float(w)) for s, e, w in obj["spans"]]
    return weights, meta
