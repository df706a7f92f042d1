"""A teacher's per-token distributions on disk: top-k ids and log-probs per target token, keyed by
``sample_id``, compact and safe across crashes.

Layout of a store directory::

    store.json            format, k, the teacher and its tokenizer (refused if they differ on reopen)
    shard-00000.bin ...   records' arrays, appended; a new shard past ``shard_bytes``
    index.jsonl           one line per record: sample_id, shard, offset, nbytes, n, crc32

One record (:class:`TokenDistributions`) is the teacher's view of one rationale, token by token:
``token_ids [n]`` (int32, the teacher's token at each target position), ``offsets [n, 2]`` (int32,
each token's character span in the scored text: what lets a student with another tokenizer align
by characters), ``top_ids [n, k]`` (int32, −1 pads a position with fewer than k), ``top_logprobs
[n, k]`` (fp16) and ``tail_logprob [n]`` (fp16, log of the mass outside the top k). That is
``4 + 8 + 6k + 2`` bytes a token: 134 KB per 1,000 tokens at k = 20.

Writes follow the teacher cache's rules (kpod/teach/cache.py): a record's bytes are appended and
fsynced before its index line, which is appended whole and fsynced. A crash therefore leaves at
most orphan bytes at a shard's end (cut off on the next open and counted) and one torn index line
(a complete row is kept, an incomplete one cut off; counted). A corrupt complete index line is an
error naming ``file:line``; a record whose bytes fail their CRC is an error naming the sample_id.
One writer at a time (``flock`` on the index, released when the process dies); readers
(:meth:`TopKStore.reader`, training) take no lock and read what was indexed when they opened.
"""

from __future__ import annotations

import fcntl
import json
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kpod.data.records import DataError
from kpod.runs import append_or_cut, write_error

FORMAT = "kpod-topk/1"
INDEX_FIELDS = ("sample_id", "shard", "offset", "nbytes", "n", "crc32")


class TopKStoreError(DataError):
    """The store cannot be used: corrupt index line, damaged record, different teacher, locked."""


@dataclass(frozen=True)
class TokenDistributions:
    """The teacher's top-k distribution at each of a rationale's ``n`` target tokens."""

    sample_id: str
    token_ids: np.ndarray  # [n] int32
    offsets: np.ndarray  # [n, 2] int32, character spans in the scored text
    top_ids: np.ndarray  # [n, k] int32, -1 = padding
    top_logprobs: np.ndarray  # [n, k] float16
    tail_logprob: np.ndarray  # [n] float16, log(1 - sum(exp(top_logprobs)))

    def to_bytes(self) -> bytes:
        return b"".join(np.ascontiguousarray(a).tobytes() for a in (
            self.token_ids.astype(np.int32), self.offsets.astype(np.int32), self.top_ids.astype(np.int32),
            self.top_logprobs.astype(np.float16), self.tail_logprob.astype(np.float16)))

    @classmethod
    def from_bytes(cls, sample_id: str, data: bytes, n: int, k: int) -> TokenDistributions:
        parts, at = [], 0
        for dtype, shape in ((np.int32, (n,)), (np.int32, (n, 2)), (np.int32, (n, k)), (np.float16, (n, k)), (np.float16, (n,))):
            size = int(np.prod(shape)) * np.dtype(dtype).itemsize
            parts.append(np.frombuffer(data, dtype=dtype, count=int(np.prod(shape)), offset=at).reshape(shape))
            at += size
        return cls(sample_id, *parts)


def record_nbytes(n: int, k: int) -> int:
    """Bytes of one record of ``n`` tokens at top-``k``."""
    return n * (4 + 8 + 4 * k + 2 * k + 2)


@dataclass
class OpenReport:
    path: str
    records: int = 0
    duplicate_rows: int = 0  # later index lines with a sample_id already seen (the first wins)
    torn_index_repaired: int = 0
    torn_index_truncated_bytes: int = 0
    orphan_bytes_truncated: int = 0  # record bytes a crash left without their index line


class TopKStore:
    """``with TopKStore(dir, k=20, teacher="...", tokenizer="...") as store:`` —
    ``store.append(dist)``, ``store.get(sample_id)``, ``sample_id in store``."""

    def __init__(self, path: Path, k: int, teacher: str, tokenizer: str, shard_bytes: int = 256 << 20,
                 read_only: bool = False) -> None:
        if k < 1:
            raise ValueError("k must be ≥ 1")
        self.path = Path(path)
        self.header = {"format": FORMAT, "k": int(k), "teacher": teacher, "tokenizer": tokenizer}
        self.shard_bytes = shard_bytes
        # a reader (training): reads the index once, takes no lock, repairs and writes nothing;
        # a torn last line or orphan bytes (a writer crashed) are left for the next writer
        self.read_only = read_only
        self.index: dict[str, dict[str, Any]] = {}
        self.report = OpenReport(str(self.path))
        self._index_f: Any = None

    @classmethod
    def reader(cls, path: Path) -> TopKStore:
        """A read-only store whose k, teacher and tokenizer are the ones ``store.json`` records."""
        head = Path(path) / "store.json"
        if not head.is_file():
            raise TopKStoreError(f"{path}: not a teacher distribution store (no store.json)")
        try:
            found = json.loads(head.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise TopKStoreError(f"{head}: not readable JSON ({e.__class__.__name__})") from None
        if not isinstance(found, dict) or found.get("format") != FORMAT or not isinstance(found.get("k"), int) \
                or found["k"] < 1 or not all(isinstance(found.get(f), str) for f in ("teacher", "tokenizer")):
            raise TopKStoreError(f"{head}: not a {FORMAT} header (format, k ≥ 1, teacher, tokenizer)")
        return cls(path, found["k"], found["teacher"], found["tokenizer"], read_only=True)

    @property
    def k(self) -> int:
        return int(self.header["k"])

    def __enter__(self) -> TopKStore:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> OpenReport:
        if not self.read_only:
            self.path.mkdir(parents=True, exist_ok=True)
        self._check_header()
        if self.read_only:  # no lock: a writer only appends, and never touches an indexed record
            with open(self.path / "index.jsonl", "rb") as f:
                self._read_index(f.read())
            self.report.records = len(self.index)
            return self.report
        f = open(self.path / "index.jsonl", "a+b")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            raise TopKStoreError(f"{self.path}: the teacher distribution store is in use by another process") from None
        self._index_f = f
        f.seek(0)
        self._read_index(f.read())
        self._cut_orphans()
        self.report.records = len(self.index)
        return self.report

    def _check_header(self) -> None:
        head = self.path / "store.json"
        if self.read_only and not head.exists():
            raise TopKStoreError(f"{self.path}: not a teacher distribution store (no store.json)")
        if head.exists():
            found = json.loads(head.read_text(encoding="utf-8"))
            if found != self.header:
                diff = ", ".join(f"{k}: stored {found.get(k)!r}, asked {v!r}" for k, v in self.header.items() if found.get(k) != v)
                raise TopKStoreError(f"{head}: this store holds another teacher's distributions ({diff}); "
                                     "use another directory or remove this one")
        else:
            tmp = head.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.header, indent=1), encoding="utf-8")
            os.replace(tmp, head)

    def _read_index(self, data: bytes) -> None:
        end = data.rfind(b"\n") + 1
        for n, line in enumerate(data[:end].split(b"\n")[:-1], 1):
            if not line.strip():
                continue
            row = _parse_row(line)
            if row is None:
                self.close()
                raise TopKStoreError(f"{self.path / 'index.jsonl'}:{n}: corrupt index line; only the last line may be "
                                     "torn by a crash — remove or fix this one")
            self._add(row)
        tail = data[end:]
        if tail and self.read_only:
            self.report.torn_index_truncated_bytes = len(tail)  # not read; a writer repairs it
        elif tail:
            row = _parse_row(tail)
            if row is not None:
                self._write_index(b"\n")
                self._add(row)
                self.report.torn_index_repaired = 1
            else:
                self._index_f.truncate(end)
                self._fsync(self._index_f)
                self.report.torn_index_truncated_bytes = len(tail)

    def _add(self, row: dict[str, Any]) -> None:
        if row["sample_id"] in self.index:
            self.report.duplicate_rows += 1
        else:
            self.index[row["sample_id"]] = row

    def _cut_orphans(self) -> None:
        """Cut each shard back to the end of its last indexed record (bytes past it lost their index
        line in a crash; their records are simply scored again)."""
        ends: dict[str, int] = {}
        for row in self.index.values():
            ends[row["shard"]] = max(ends.get(row["shard"], 0), row["offset"] + row["nbytes"])
        for shard in sorted(self.path.glob("shard-*.bin")):
            size, end = shard.stat().st_size, ends.get(shard.name, 0)
            if size > end:
                with open(shard, "r+b") as f:
                    f.truncate(end)
                    self._fsync(f)
                self.report.orphan_bytes_truncated += size - end

    def __contains__(self, sample_id: str) -> bool:
        return sample_id in self.index

    def _shard_for(self, nbytes: int) -> tuple[str, int]:
        shards = sorted(self.path.glob("shard-*.bin"))
        if shards and shards[-1].stat().st_size + nbytes <= self.shard_bytes:
            return shards[-1].name, shards[-1].stat().st_size
        if shards and shards[-1].stat().st_size == 0:
            return shards[-1].name, 0
        return f"shard-{len(shards):05d}.bin", 0

    def append(self, dist: TokenDistributions) -> bool:
        """Store one record (durable on return); False if its sample_id is already stored."""
        if self._index_f is None:
            raise TopKStoreError(f"{self.path}: the store is not open for writing")
        n = len(dist.token_ids)
        shapes = (dist.offsets.shape, dist.top_ids.shape, dist.top_logprobs.shape, dist.tail_logprob.shape)
        if shapes != ((n, 2), (n, self.k), (n, self.k), (n,)):
            raise TopKStoreError(f"{dist.sample_id}: arrays must be [n, 2], [n, k], [n, k], [n] with n = {n}, "
                                 f"k = {self.k}; got {shapes}")
        if dist.sample_id in self.index:
            return False
        data = dist.to_bytes()
        shard, offset = self._shard_for(len(data))
        path = self.path / shard
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            _append_durably(fd, data, path)
        finally:
            os.close(fd)
        row = {"sample_id": dist.sample_id, "shard": shard, "offset": offset, "nbytes": len(data), "n": n,
               "crc32": zlib.crc32(data)}
        self._write_index((json.dumps(row) + "\n").encode("utf-8"))
        self.index[dist.sample_id] = row
        return True

    def get(self, sample_id: str) -> TokenDistributions:
        row = self.index.get(sample_id)
        if row is None:
            raise TopKStoreError(f"{self.path}: no teacher distributions for sample_id {sample_id!r}")
        with open(self.path / row["shard"], "rb") as f:
            f.seek(row["offset"])
            data = f.read(row["nbytes"])
        if len(data) != row["nbytes"] or zlib.crc32(data) != row["crc32"]:
            raise TopKStoreError(f"{self.path / row['shard']}: the record of sample_id {sample_id!r} is damaged "
                                 "(CRC mismatch); remove it from index.jsonl to score it again")
        return TokenDistributions.from_bytes(sample_id, data, row["n"], self.k)

    def _write_index(self, line: bytes) -> None:
        _append_durably(self._index_f.fileno(), line, self.path / "index.jsonl")

    @staticmethod
    def _fsync(f: Any) -> None:
        f.flush()
        os.fsync(f.fileno())

    def close(self) -> None:
        if self._index_f is not None:
            self._index_f.close()
            self._index_f = None


def _append_durably(fd: int, data: bytes, path: Path) -> None:
    """Append and fsync, or leave the file as it was and raise the run's write error naming ``path``."""
    try:
        append_or_cut(fd, data, sync=True)
    except OSError as e:
        raise write_error(path, e) from None


def _parse_row(line: bytes) -> dict[str, Any] | None:
    try:
        row = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(row, dict) or any(k not in row for k in INDEX_FIELDS):
        return None
    return row
