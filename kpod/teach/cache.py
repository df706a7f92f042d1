"""Append-only JSONL cache of teacher replies, one row per (cache key), safe across crashes.

* Rows are only ever appended: the whole line including its newline, then ``fsync``, under a
  thread lock. A complete line is therefore never rewritten.
* A failed append (a full disk) cuts off what part of its line reached the file and raises
  :class:`~kpod.runs.RunWriteError` naming the file; every later append raises it too.
* A crash can leave at most one *torn* final line (no newline). On open it is repaired if it is
  a complete row (the newline is added) and otherwise truncated away (only the bytes after the
  last newline; its request is simply sent again). Both are counted in :attr:`OpenReport`.
* A corrupt *complete* line is an error naming ``file:line`` — never skipped.
* A second row with a key already seen (e.g. two caches concatenated) is ignored and counted;
  the first row wins.
* One process at a time: the file is locked (``flock``) while open; the lock dies with the
  process, so a SIGKILLed run leaves no stale lock.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kpod.data.records import DataError
from kpod.runs import RunWriteError, append_or_cut, write_error

REQUIRED_FIELDS = ("key", "sample_id", "index", "completion")


class CacheError(DataError):
    """The teacher cache cannot be used (corrupt line, locked by another process)."""


@dataclass
class OpenReport:
    path: str
    rows: int = 0  # distinct keys read
    duplicate_rows: int = 0  # later rows with a key already seen (ignored)
    torn_tail_repaired: int = 0  # a complete final row without its newline: newline added
    torn_tail_truncated_bytes: int = 0  # an incomplete final line: removed

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_row(obj: Any, where: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise CacheError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    missing = [k for k in REQUIRED_FIELDS if k not in obj]
    if missing:
        raise CacheError(f"{where}: not a kpod teacher-cache row (missing {', '.join(missing)})")
    return obj


class TeacherCache:
    """``with TeacherCache(path) as cache:`` — ``cache.rows`` (key → row), ``cache.append(row)``."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.rows: dict[str, dict[str, Any]] = {}
        self.report = OpenReport(str(self.path))
        self._lock = threading.Lock()
        self._f: Any = None
        self._failed: RunWriteError | None = None  # a failed append: every later one fails the same way

    def __enter__(self) -> TeacherCache:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> OpenReport:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+b")  # held open (and locked) until close()
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            raise CacheError(f"{self.path}: the teacher cache is in use by another kpod teach process") from None
        self._f = f
        f.seek(0)
        data = f.read()
        end = data.rfind(b"\n") + 1  # bytes [0, end) are complete lines
        for n, line in enumerate(data[:end].split(b"\n")[:-1], 1):
            if not line.strip():
                continue
            where = f"{self.path}:{n}"
            try:
                row = _check_row(json.loads(line), where)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                f.close()
                self._f = None
                raise CacheError(f"{where}: corrupt line in the teacher cache ({e.__class__.__name__}); "
                                 "only the last line may be torn by a crash — remove or fix this one") from None
            self._add(row)
        tail = data[end:]
        if tail:
            row = self._parse_tail(tail)
            if row is not None:
                f.write(b"\n")
                self._fsync()
                self._add(row)
                self.report.torn_tail_repaired = 1
            else:
                f.truncate(end)
                self._fsync()
                self.report.torn_tail_truncated_bytes = len(tail)
        self.report.rows = len(self.rows)
        return self.report

    def _parse_tail(self, tail: bytes) -> dict[str, Any] | None:
        try:
            obj = json.loads(tail)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None
        if not isinstance(obj, dict) or any(k not in obj for k in REQUIRED_FIELDS):
            return None
        return obj

    def _add(self, row: dict[str, Any]) -> None:
        if row["key"] in self.rows:
            self.report.duplicate_rows += 1
        else:
            self.rows[row["key"]] = row

    def _fsync(self) -> None:
        self._f.flush()
        os.fsync(self._f.fileno())

    def __contains__(self, key: str) -> bool:
        return key in self.rows

    def append(self, row: dict[str, Any]) -> bool:
        """Append one row (thread-safe, durable on return); False if its key is already cached."""
        _check_row(row, "new row")
        line = (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")
        with self._lock:
            if self._f is None:
                raise CacheError(f"{self.path}: the teacher cache is not open")
            if self._failed is not None:
                raise self._failed
            if row["key"] in self.rows:
                return False
            self._write_line(line)
            self.rows[row["key"]] = row
            return True

    def _write_line(self, line: bytes) -> None:
        """Append ``line`` durably, or leave the file exactly as it was and fail every later append
        (a full disk: what part of the line reached the file is cut off again, so the cache never
        holds a torn line in its middle; one the cut-off missed is removed on the next open)."""
        self._f.flush()
        try:
            append_or_cut(self._f.fileno(), line, sync=True)
        except OSError as e:
            self._failed = write_error(self.path, e)
            raise self._failed from None

    def close(self) -> None:
        with self._lock:
            if self._f is not None:
                self._f.close()  # releases the flock
                self._f = None
