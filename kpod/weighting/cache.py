"""On-disk cache of token weights, keyed by data content + strategy params + seed + model digests.

Location: :func:`kpod.cache.cache_root` ``/weights/<key>.jsonl``; one line per sample:
``{"sample_id": ..., "spans": [[start, end, w], ...]}`` after a ``{"meta": ...}`` line, and last
the entry's digest line. Keys, the atomic write and the digest check are :mod:`kpod.cache`'s,
shared with the other caches.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kpod.cache import (
    CacheDamaged,
    cache_root,
    check_verified,
    fingerprint,
    remove_entry,
    write_verified,
)
from kpod.data.records import Record, records_digest
from kpod.weighting.base import CharSpanWeights


def cache_key(records: list[Record], strategy: str, params: dict[str, Any], seed: int, model: dict[str, Any]) -> str:
    """``<strategy>-<fingerprint>`` of the records' content, the params, the seed and ``model``
    (digests of whatever model the weights are computed from)."""
    digest = fingerprint("weights", records_digest(records), strategy, params, seed, model)
    return f"{strategy}-{digest[:24]}"


def cache_path(key: str, root: Path | None = None) -> Path:
    return (root or cache_root()) / "weights" / f"{key}.jsonl"


def save_weights(path: Path, weights: CharSpanWeights, meta: dict[str, Any] | None = None) -> None:
    """The entry, then its digest line (:func:`kpod.cache.write_verified`)."""
    lines = [json.dumps({"meta": meta or {}})]
    lines += [json.dumps({"sample_id": sid, "spans": [list(s) for s in weights[sid]]}) for sid in sorted(weights)]
    write_verified(path, "".join(line + "\n" for line in lines))


def load_weights(path: Path) -> tuple[CharSpanWeights, dict[str, Any]]:
    """The weights of a cache entry whose digest checks out. A damaged entry (truncated, edited,
    lines removed, no digest) is removed and :class:`kpod.cache.CacheDamaged` raised: the weighting
    phase (kpod/weighting/cached.py) then computes the weights again."""
    text, why = check_verified(path)
    if text is None:
        remove_entry(path)
        raise CacheDamaged(f"{path}: the token-weights cache entry is damaged ({why}); it was removed")
    weights: CharSpanWeights = {}
    meta: dict[str, Any] = {}
    for n, line in enumerate(text.splitlines(), 1):
        obj = json.loads(line)
        if n == 1 and "meta" in obj:
            meta = obj["meta"]
            continue
        weights[obj["sample_id"]] = [(int(s), int(e), float(w)) for s, e, w in obj["spans"]]
    return weights, meta
