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
* **Every entry carries a content digest written after its data**, and is checked on every
  read: a file entry ends with a ``#kpod-sha256 <hex> <bytes>`` line over everything before it
  (:func:`write_verified`, :func:`read_verified`); a directory entry holds ``kpod_digest.json``,
  the sha256 and size of each of its files, written last (:func:`build_dir`,
  :func:`verified_dir`). A truncated, edited or incomplete entry (a file cut short, lines
  removed, bytes zeroed, a file deleted) fails the check, is reported on one line
  (:data:`log`) and removed; the caller builds it again, or, where it cannot, stops with
  :class:`CacheDamaged` saying the entry is gone and a rerun rebuilds it.
* **An unwritable cache is an error naming it** (:class:`CacheUnwritable`): a read-only or
  not-permitted ``$KPOD_CACHE`` stops the run before any work is lost, saying which directory
  and how to point ``KPOD_CACHE`` elsewhere. A full disk is the run's usual write error.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from kpod.runs import (
    RunDirError,
    RunWriteError,
    atomic_write_text,
    os_error_of,
    unique_tmp,
    write_error,
)

log = logging.getLogger("kpod.cache")  # the one-line reports of damaged entries (stderr by default)
MANIFEST = "kpod_digest.json"
_NOT_PERMITTED = (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOENT, errno.ENOTDIR)  # the cache dir is unusable
_DIGEST_LINE = "#kpod-sha256 "


class CacheDamaged(RunDirError):
    """A cache entry failed its digest check and could not be rebuilt here; it has been removed."""


class CacheUnwritable(RunDirError):
    """``$KPOD_CACHE`` cannot be written (read-only, not permitted)."""


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


@contextlib.contextmanager
def cache_writing(path: Path) -> Any:
    """A write into the cache: not permitted or read-only → :class:`CacheUnwritable` naming
    ``$KPOD_CACHE``; any other OSError (a full disk) → the run's :class:`RunWriteError`."""
    try:
        yield
    except RunWriteError as e:
        if e.errno in _NOT_PERMITTED:
            raise _unwritable(path, str(e)) from None
        raise
    except Exception as e:
        cause = os_error_of(e)  # an OSError, or a library's error wrapping one (safetensors)
        if cause is None:
            raise
        if cause.errno in _NOT_PERMITTED:
            raise _unwritable(path, cause.strerror or str(cause)) from None
        raise write_error(path, cause) from None


def _unwritable(path: Path, why: str) -> CacheUnwritable:
    return CacheUnwritable(
        f"KPOD_CACHE={cache_root()}: cannot write the cache ({why}; at {path}); point KPOD_CACHE at a "
        "writable directory, e.g. export KPOD_CACHE=$HOME/.cache/kpod"
    )


def write_file(path: Path, text: str) -> None:
    """Write a cache file atomically (unique temporary name, fsync, rename); parent made if missing."""
    with cache_writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, text)


def _digest_line(data: bytes) -> str:
    return f"{_DIGEST_LINE}{hashlib.sha256(data).hexdigest()} {len(data)}\n"


def write_verified(path: Path, text: str) -> None:
    """A file entry: ``text`` and, after it, the digest line over its bytes (one atomic write)."""
    body = text if not text or text.endswith("\n") else text + "\n"
    write_file(path, body + _digest_line(body.encode("utf-8")))


def damaged(path: Path, why: str) -> None:
    """Report a damaged entry on one line and remove it (file or directory)."""
    log.warning("kpod cache: %s is damaged (%s); removed, it is built again", path, why)
    remove_entry(path)


def remove_entry(path: Path) -> None:
    """Remove a cache entry; a directory is first renamed aside, so no reader sees it half-gone."""
    with cache_writing(path):
        if path.is_dir():
            aside = unique_tmp(path)
            os.rename(path, aside)
            shutil.rmtree(aside)
        else:
            path.unlink(missing_ok=True)


def check_verified(path: Path) -> tuple[str | None, str]:
    """(the entry's text, "") when ``path`` passes its digest check, else (None, why)."""
    data = path.read_bytes()
    cut = data.rstrip(b"\n").rfind(b"\n") + 1  # where the last line starts
    last = data[cut:].decode("utf-8", errors="replace").strip()
    if not last.startswith(_DIGEST_LINE):
        return None, "no digest line at the end: cut short, or written by an older kpod"
    body = data[:cut]
    if _digest_line(body).strip() != last:
        return None, "its content does not match its digest: edited, truncated or lines removed"
    try:
        return body.decode("utf-8"), ""
    except UnicodeDecodeError:
        return None, "not UTF-8"


def read_verified(path: Path) -> str | None:
    """The text of a file entry, or None when it is missing or was damaged (then reported and
    removed, so the caller builds it again)."""
    if not path.is_file():
        return None
    text, why = check_verified(path)
    if text is None:
        damaged(path, why)
    return text


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """sha256 (hex) of a file, read in 1 MiB chunks (a checkpoint can be many GB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _write_manifest(folder: Path) -> None:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)
    doc = {str(p.relative_to(folder)): {"sha256": file_sha256(p), "bytes": p.stat().st_size} for p in files}
    atomic_write_text(folder / MANIFEST, json.dumps({"format": "kpod-cache-digest/1", "files": doc}, indent=1))


def _dir_problem(path: Path) -> str | None:
    """Why the directory entry ``path`` fails its check, or None when every file matches."""
    try:
        doc = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
        files = doc["files"]
    except FileNotFoundError:
        return f"no {MANIFEST}: incomplete, or written by an older kpod"
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        return f"{MANIFEST} is unreadable"
    for name, want in files.items():
        f = path / name
        if not f.is_file():
            return f"{name} is missing"
        if f.stat().st_size != want["bytes"]:
            return f"{name} has {f.stat().st_size} bytes, {want['bytes']} were written"
        if file_sha256(f) != want["sha256"]:
            return f"{name} does not match its digest (edited or damaged)"
    return None


def verified_dir(path: Path) -> bool:
    """Is the directory entry ``path`` complete and intact? A damaged one is reported on one line
    and removed (False: build it again); a missing one is False."""
    if not path.exists():
        return False
    problem = _dir_problem(path)
    if problem is None:
        return True
    damaged(path, problem)
    return False


def build_dir(path: Path, build: Callable[[Path], None], marker: str) -> bool:
    """Build the directory entry ``path``: ``build(tmp)`` fills a fresh temporary directory and
    writes ``marker`` inside it last; the digest manifest is written after it, and the directory
    is then renamed to ``path``.

    Returns False when another process finished ``path`` first (its copy is kept, ours removed).
    A failed build leaves nothing behind.
    """
    tmp = unique_tmp(path)
    with cache_writing(tmp):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            build(tmp)
            if not (tmp / marker).is_file():
                raise RuntimeError(f"cache entry {path}: the build wrote no {marker}")
            _write_manifest(tmp)
            if (path / MANIFEST).is_file():  # a parallel build (kpod ablate --jobs) finished first
                return False
            try:
                os.rename(tmp, path)
            except OSError:
                if not (path / MANIFEST).is_file():  # not a lost race: a real failure
                    raise
                return False
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
    return True
