"""A minimal OpenAI-compatible chat-completions client (stdlib only: ``urllib`` + threads).

``POST {base_url}/chat/completions`` with ``{model, messages, temperature, top_p, max_tokens,
n: 1}``; reads ``choices[0].message.content``, ``finish_reason`` and ``usage``.

Retries (up to ``teacher.api.max_retries``): HTTP 408, 409, 429 and 5xx, timeouts, refused or
dropped connections, and a 200 whose body is not a chat completion. 429 and 503 honour
``Retry-After``; everything else waits an exponential backoff with jitter. Any other 4xx (401
bad key, 404 unknown model, 400 bad request) is a :class:`TeacherError` at once.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import random
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kpod.data import bounded_json
from kpod.teach.base import Completion, TeacherError, TeacherUnavailable
from kpod.teach.prompts import Message, Sampling
from kpod.teach.ratelimit import TokenBucket, backoff_delay, parse_retry_after
from kpod.teacher_config import TeacherApiConfig

RETRYABLE_STATUS = {408, 409, 429, 500, 502, 503, 504}


@dataclass
class RequestStats:
    """Counts over all requests of a run (thread-safe)."""

    requests: int = 0
    retries: int = 0
    status: dict[str, int] = field(default_factory=dict)  # retried failures by status / kind
    waited_s: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def failure(self, kind: str, waited: float) -> None:
        with self._lock:
            self.retries += 1
            self.status[kind] = self.status.get(kind, 0) + 1
            self.waited_s += waited

    def request(self) -> None:
        with self._lock:
            self.requests += 1

    def as_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "retries": self.retries, "retried_by_cause": dict(self.status),
                "backoff_seconds": round(self.waited_s, 3)}


def endpoint_from_env(api: TeacherApiConfig) -> tuple[str, str | None]:
    """(base URL, API key or None) from the environment variables the recipe names."""
    base = os.environ.get(api.base_url_env, "").strip()
    if not base:
        raise TeacherError(
            f"teacher.api.base_url_env: environment variable {api.base_url_env} is not set; "
            f"export {api.base_url_env}=https://api.openai.com/v1 (or your server's /v1 URL)"
        )
    if not base.startswith(("http://", "https://")):
        raise TeacherError(f"teacher.api.base_url_env: {api.base_url_env}={base!r} is not an http(s) URL")
    key = None
    if api.api_key_env is not None:
        key = os.environ.get(api.api_key_env, "").strip()
        if not key:
            raise TeacherError(
                f"teacher.api.api_key_env: environment variable {api.api_key_env} is not set; export it, "
                "or set teacher.api.api_key_env: null for a server that needs no key"
            )
    return base.rstrip("/"), key


class _Retryable(Exception):
    def __init__(self, kind: str, detail: str, retry_after: float | None = None) -> None:
        super().__init__(detail)
        self.kind = kind
        self.retry_after = retry_after


class ChatClient:
    """One model at one endpoint; :meth:`complete` is safe to call from many threads."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        model: str,
        api: TeacherApiConfig,
        *,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.url = f"{base_url}/chat/completions"
        self.api_key = api_key
        self.model = model
        self.api = api
        self.sleep = sleep
        self.rng = rng or random.Random()
        self.stats = RequestStats()
        self.bucket = TokenBucket(api.requests_per_minute / 60.0) if api.requests_per_minute else None

    def complete(self, messages: list[Message], sampling: Sampling) -> Completion:
        body = json.dumps(
            {"model": self.model, "messages": messages, "n": 1, **sampling.as_dict()}
        ).encode("utf-8")
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        start = time.monotonic()
        for attempt in range(self.api.max_retries + 1):
            if self.bucket is not None:
                self.bucket.acquire(self.sleep)
            self.stats.request()
            try:
                c = self._once(body, headers)
                c.attempts, c.latency_s = attempt + 1, round(time.monotonic() - start, 3)
                return c
            except _Retryable as e:
                if attempt == self.api.max_retries:
                    raise TeacherUnavailable(
                        f"{self.url}: giving up after {attempt + 1} attempts (teacher.api.max_retries="
                        f"{self.api.max_retries}); last failure: {e.kind}: {e}"
                    ) from None
                wait = e.retry_after if e.retry_after is not None else backoff_delay(
                    attempt, self.api.backoff_base_s, self.api.backoff_max_s, self.rng
                )
                self.stats.failure(e.kind, wait)
                self.sleep(wait)
        raise AssertionError("unreachable")

    def _once(self, body: bytes, headers: dict[str, str]) -> Completion:
        req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        watch = _Deadline(self.api.timeout_s)
        try:
            with watch.opener().open(req, timeout=self.api.timeout_s) as resp:
                raw = _read_bounded(resp, watch)
        except urllib.error.HTTPError as e:
            if watch.fired:
                raise watch.timeout() from None
            detail = _body_excerpt(e)
            if e.code in RETRYABLE_STATUS:
                ra = parse_retry_after(e.headers.get("Retry-After")) if e.code in (429, 503) else None
                raise _Retryable(f"HTTP {e.code}", detail, ra) from None
            key = (f" (check {self.api.api_key_env})" if self.api.api_key_env is not None else
                   " (the server wants a key: set teacher.api.api_key_env to the variable holding it)")
            hint = {401: key, 403: key, 404: " (check teacher.model and the base URL)"}.get(e.code, "")
            raise TeacherError(f"{self.url}: HTTP {e.code}{hint}: {detail}") from None
        except urllib.error.URLError as e:
            if watch.fired:
                raise watch.timeout() from None
            raise _Retryable("connection", str(e.reason)) from None
        except (OSError, http.client.HTTPException) as e:  # timeouts, dropped connections
            if watch.fired:
                raise watch.timeout() from None
            raise _Retryable(e.__class__.__name__, str(e)) from None
        finally:
            watch.cancel()
        if watch.fired:  # the watchdog cut the body short
            raise watch.timeout()
        return _parse_completion(raw)


MAX_REPLY_BYTES = 16 << 20  # a chat completion of max_tokens tokens is far smaller


class _Deadline:
    """The whole request (connect, headers, body) within ``seconds``: a timer shuts the socket
    down when they run out, which ends a read blocked on a server that sends one byte at a time
    (a socket timeout alone restarts with every byte)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.fired = False
        self._sock: Any = None
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def watch(self, sock: Any) -> None:
        with self._lock:
            self._sock = sock
            fired = self.fired
        if fired:
            self._fire()

    def cancel(self) -> None:
        self._timer.cancel()

    def timeout(self) -> _Retryable:
        return _Retryable("timeout", f"no complete reply within teacher.api.timeout_s={self.seconds:g} s")

    def opener(self) -> urllib.request.OpenerDirector:
        """urllib's opener (proxies from the environment included) whose connections this watches."""
        watch = self

        class Http(http.client.HTTPConnection):
            def connect(self) -> None:
                super().connect()
                watch.watch(self.sock)

        class Https(http.client.HTTPSConnection):
            def connect(self) -> None:
                super().connect()
                watch.watch(self.sock)

        class HttpHandler(urllib.request.HTTPHandler):
            def http_open(self, req: Any) -> Any:
                return self.do_open(Http, req)

        class HttpsHandler(urllib.request.HTTPSHandler):
            def https_open(self, req: Any) -> Any:
                return self.do_open(Https, req, context=self._context)

        return urllib.request.build_opener(HttpHandler, HttpsHandler)


def _read_bounded(resp: Any, watch: _Deadline) -> bytes:
    """The body, read as it arrives, at most :data:`MAX_REPLY_BYTES`."""
    chunks, size = [], 0
    while not watch.fired:
        chunk = resp.read1(1 << 16)
        if not chunk:
            break
        size += len(chunk)
        if size > MAX_REPLY_BYTES:
            raise _Retryable("bad response", f"a reply larger than {MAX_REPLY_BYTES >> 20} MiB")
        chunks.append(chunk)
    return b"".join(chunks)


def _body_excerpt(e: urllib.error.HTTPError) -> str:
    try:
        text = e.read().decode("utf-8", errors="replace")
    except (OSError, http.client.HTTPException):
        return e.reason if isinstance(e.reason, str) else ""
    return " ".join(text.split())[:300]


def _parse_completion(raw: bytes) -> Completion:
    try:
        doc = bounded_json.loads(raw)  # integer digits and nesting bounded: a limit is a bad response
        choice = doc["choices"][0]
        content = choice["message"].get("content")
    except bounded_json.JsonLimitError as e:
        raise _Retryable("bad response", f"not a usable chat completion: {e}") from None
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, IndexError, TypeError, AttributeError) as e:
        raise _Retryable("bad response", f"not a chat completion ({e.__class__.__name__}): "
                         f"{raw[:200].decode('utf-8', errors='replace')}") from None
    if content is not None and not isinstance(content, str):
        raise _Retryable("bad response", f"message.content is {type(content).__name__}, not a string")
    usage = doc.get("usage") if isinstance(doc.get("usage"), dict) else {}
    return Completion(
        text=content or "",
        finish_reason=choice.get("finish_reason"),
        prompt_tokens=_int_or_none(usage.get("prompt_tokens")),
        completion_tokens=_int_or_none(usage.get("completion_tokens")),
    )


def _int_or_none(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None
