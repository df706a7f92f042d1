"""Question clusters for the diversity term of Eq. 12.

K-means (scipy, k-means++ init, ``restarts`` runs with a fixed seed, best inertia kept) over a
question embedding:

* ``student_embedding`` (default): mean of the student's input embeddings of the question tokens;
* ``hashed_bow``: a signed hashed bag of lower-cased words (no model needed);
* ``glove``: mean of lower-cased GloVe word vectors from a text file the user points to (the
  paper's choice); questions with no known word get the zero vector and are counted.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import numpy as np

from kpod.data.records import DataError, Record

_WORD = re.compile(r"[A-Za-z']+|\d+")


def words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


def hashed_bow(questions: list[str], dim: int = 256) -> np.ndarray:
    out = np.zeros((len(questions), dim), dtype=np.float64)
    for i, q in enumerate(questions):
        for w in words(q):
            h = int.from_bytes(hashlib.md5(w.encode()).digest()[:8], "little")
            out[i, h % dim] += 1.0 if (h >> 63) & 1 else -1.0
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.where(norms > 0, norms, 1.0)


def student_embedding(questions: list[str], model: Any, tokenizer: Any) -> np.ndarray:
    emb = model.get_input_embeddings().weight.detach().float().cpu().numpy()
    out = np.zeros((len(questions), emb.shape[1]), dtype=np.float64)
    for i, q in enumerate(questions):
        ids = tokenizer(q, add_special_tokens=False)["input_ids"]
        if ids:
            out[i] = emb[ids].mean(0)
    return out


def load_glove(path: Path, vocab: set[str]) -> dict[str, np.ndarray]:
    vecs: dict[str, np.ndarray] = {}
    try:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                word, _, rest = line.rstrip("\n").partition(" ")
                if word in vocab:
                    try:
                        vecs[word] = np.asarray(rest.split(), dtype=np.float64)
                    except ValueError:
                        raise DataError(f"{path}:{n}: not a GloVe line ('word v1 v2 …')") from None
    except FileNotFoundError:
        raise DataError(f"clusters.glove_path: no such file {path}") from None
    return vecs


def glove_embedding(questions: list[str], path: Path) -> tuple[np.ndarray, int]:
    toks = [words(q) for q in questions]
    vecs = load_glove(path, {w for t in toks for w in t})
    if not vecs:
        raise DataError(f"{path}: no question word has a vector")
    dim = len(next(iter(vecs.values())))
    out = np.zeros((len(questions), dim))
    missing = 0
    for i, t in enumerate(toks):
        found = [vecs[w] for w in t if w in vecs]
        if found:
            out[i] = np.mean(found, axis=0)
        else:
            missing += 1
    return out, missing


def kmeans(x: np.ndarray, k: int, seed: int, restarts: int = 10, iters: int = 50) -> np.ndarray:
    """Labels of the best of ``restarts`` k-means++ runs (lowest inertia); deterministic by seed."""
    from scipy.cluster.vq import kmeans2

    n = len(x)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    k = min(k, n)
    rng = np.random.default_rng(seed)
    best, best_inertia = None, np.inf
    for _ in range(restarts):
        centroids, labels = kmeans2(x, k, iter=iters, minit="++", seed=rng)
        inertia = float(((x - centroids[labels]) ** 2).sum())
        if inertia < best_inertia:
            best, best_inertia = labels, inertia
    assert best is not None
    return best.astype(np.int64)


def question_clusters(
    records: list[Record], cfg: Any, seed: int, model: Any = None, tokenizer: Any = None
) -> tuple[dict[str, int], dict[str, Any]]:
    """``{sample_id: cluster}`` and a report (sizes, embedder, questions without vectors)."""
    records = sorted(records, key=lambda r: r.sample_id)
    qs = [r.question for r in records]
    report: dict[str, Any] = {"embedder": cfg.embedder, "k": cfg.k}
    if cfg.embedder == "student_embedding":
        x = student_embedding(qs, model, tokenizer)
    elif cfg.embedder == "hashed_bow":
        x = hashed_bow(qs, cfg.hash_dim)
    else:
        if cfg.glove_path is None:
            raise DataError("clusters.glove_path: required when clusters.embedder is 'glove'")
        x, missing = glove_embedding(qs, Path(cfg.glove_path))
        report["questions_without_vectors"] = missing
    labels = kmeans(x, cfg.k, seed=cfg.seed if cfg.seed is not None else seed, restarts=cfg.restarts)
    report["sizes"] = np.bincount(labels, minlength=min(cfg.k, len(qs))).tolist()
    return {r.sample_id: int(c) for r, c in zip(records, labels)}, report
