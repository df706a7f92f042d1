"""One process per run directory: the run lock, and children that die with their parent.

``kpod run`` holds ``RUN_DIR/.kpod-run.lock`` from before it looks at the directory until it
exits (any exit Python sees: success, error, Ctrl-C, SIGTERM): an exclusive ``flock`` on the open
file, which the kernel drops when the holder dies however it dies. The file records the holder's
pid, host, process start time and command line, so a second ``kpod run`` (plain, ``--resume`` or
``--overwrite``) is refused naming the holder. A lock whose holder is gone (``kill -9``, a power
cut) is stale and taken over: its flock is free and, on the same host, its pid is dead or alive
with another start time (the pid was reused). A lock recorded by another host cannot be checked
from here and is never taken over: the message says which file to remove.

``kpod ablate`` starts its runs with ``KPOD_DIE_WITH_PARENT=<its pid>``: on Linux the child asks
the kernel for SIGTERM when its parent dies (``prctl(PR_SET_PDEATHSIG)``), so a ``kill -9`` of the
sweep leaves no run behind it; where prctl is missing (macOS) a child outlives its parent, and the
lock still keeps a rerun from running beside it.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kpod.runs import LOCK_NAME, RunDirError

PARENT_ENV = "KPOD_DIE_WITH_PARENT"
_PR_SET_PDEATHSIG = 1


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux ``/proc``), None elsewhere."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[19]  # field 22; the command name may hold spaces


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _holder_text(h: dict[str, Any]) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(h.get("time", 0)))
    return f"pid {h.get('pid')} on {h.get('host')}, started {started}: {h.get('command', '?')}"


def _is_stale(h: dict[str, Any]) -> bool:
    if h.get("host") != socket.gethostname():
        return False
    pid = h.get("pid")
    if not isinstance(pid, int) or not _alive(pid):
        return True
    started = _start_time(pid)
    return started is not None and h.get("start") is not None and started != h["start"]


def _read(path: Path) -> dict[str, Any] | None:
    """The holder recorded in ``path``; None when the file vanished; {} when it is unreadable
    (a holder killed between creating and filling it)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError:
        return {}
    try:
        h = json.loads(text)
    except json.JSONDecodeError:
        return {}
    return h if isinstance(h, dict) else {}


_HELD: dict[Path, int] = {}  # lock path → the open descriptor holding its flock


def _busy(run_dir: Path, path: Path, holder: dict[str, Any]) -> RunDirError:
    here = holder.get("host") in (None, socket.gethostname())
    return RunDirError(
        f"{run_dir} is in use by another kpod run ({_holder_text(holder)}); wait for it to finish or stop it"
        + ("" if here else f", or remove {path} if that host no longer runs it")
    )


def _flock(fd: int) -> bool | None:
    """Try the exclusive flock: True taken, False held by another open file, None unsupported
    (some network filesystems): then the recorded pid, host and start time decide alone."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:
        return None
    return True


def acquire(run_dir: Path) -> Path:
    """Take the lock for this process (the directory is made if missing); RunDirError if a live
    process holds it.

    The kernel's flock on the open lock file is what excludes a second run, and it goes with its
    holder however that dies, so two runs racing for a stale lock cannot both win. The recorded
    holder names who holds it: a lock recorded by another host is never taken over, and where
    flock is unsupported a live pid with its start time still holds the directory."""
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"{run_dir} exists and is not a directory; choose another --out")
    path = run_dir / LOCK_NAME
    me = {"pid": os.getpid(), "host": socket.gethostname(), "start": _start_time(os.getpid()),
          "time": time.time(), "command": " ".join(["kpod", *sys.argv[1:]])[:300]}
    for _ in range(50):  # the lock file replaced while we opened it (a release, a takeover): look again
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise RunDirError(f"cannot write to run directory {run_dir}: {e.strerror}") from None
        try:
            locked = _flock(fd)
            if locked is False:
                raise _busy(run_dir, path, _read(path) or {})
            try:
                same_file = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same_file = False
            if not same_file:
                os.close(fd)
                continue
            holder = _read(path) or {}
            foreign = bool(holder) and holder.get("host") != me["host"]  # its flock may not reach us
            if foreign or (locked is None and holder and not _is_stale(holder)):
                raise _busy(run_dir, path, holder)
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(me).encode("utf-8"), 0)
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            raise
        _HELD[path] = fd
        return path
    raise RunDirError(f"{run_dir}: cannot take the run lock {path} (other processes keep replacing it)")


def release(path: Path) -> None:
    """Remove the lock if this process holds it: the file goes first, then the flock (a run
    that opened the old file meanwhile sees it is gone and looks again)."""
    fd = _HELD.pop(path, None)
    holder = _read(path)
    if holder and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)


@contextlib.contextmanager
def run_dir_lock(run_dir: Path, enabled: bool = True) -> Iterator[None]:
    """Hold the lock of ``run_dir`` for the block (``enabled=False``: a non-main rank, no lock)."""
    if not enabled:
        yield
        return
    path = acquire(run_dir)
    try:
        yield
    finally:
        release(path)


def _exit(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def terminate_as_exit() -> Iterator[None]:
    """Within the block, SIGTERM ends this process through ``SystemExit`` (exit 143), so
    ``finally`` blocks (the run lock) run; Python's default would end it without them. The
    previous handler comes back after the block (only the main thread may set handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def die_with_parent() -> None:
    """Under ``KPOD_DIE_WITH_PARENT=<pid>`` (set by ``kpod ablate``): SIGTERM when the parent
    dies (Linux); exit at once if it is gone already (we were orphaned before asking)."""
    parent = os.environ.get(PARENT_ENV)
    if not parent or not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    if str(os.getppid()) != parent:
        raise SystemExit(128 + signal.SIGTERM)


__all__ = ["LOCK_NAME", "PARENT_ENV", "acquire", "release", "run_dir_lock", "die_with_parent", "terminate_as_exit"]
