"""A misbehaving chat-completions endpoint on 127.0.0.1: a server that drips one byte at a time
(in the headers or in the body), replies with a 5,000-digit integer or a 100,000-deep nesting,
or cuts rationales at max_tokens. Each is bounded by the client (a total deadline per request,
integer digits, depth), retried and counted, and truncated rationales are dropped and counted.

The server stops itself: a dripping handler gives up after 60 s or when the test closes it.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from kpod.recipe import validate_recipe
from kpod.teach.base import TeacherUnavailable
from kpod.teach.openai import ChatClient
from kpod.teach.prompts import Sampling
from kpod.teach.run import teach
from kpod.teacher_config import TeacherApiConfig

QUESTIONS = [("Dan has 15 caps and finds 18 more. How many caps does he have?", "33"),
             ("There are 40 birds and 13 fly away. How many birds are left?", "27"),
             ("Each bag has 6 apples. How many apples are in 8 bags?", "48"),
             ("Tom read 12 pages on Monday and 30 on Tuesday. How many pages did he read?", "42")]


def completion(text: str, finish: str = "stop") -> dict[str, Any]:
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 4}}


class HostileServer:
    """``mode`` picks the misbehaviour; ``stop`` ends any drip at once."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.stop = threading.Event()
        self.requests = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def drip(self, data: bytes) -> None:
                end = time.monotonic() + 60
                for i in range(len(data)):
                    if outer.stop.wait(0.2) or time.monotonic() > end:
                        return
                    self.wfile.write(data[i:i + 1])
                    self.wfile.flush()

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests += 1
                try:
                    self.answer(body)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up: expected here
                    pass

            def answer(self, body: dict[str, Any]) -> None:
                mode = outer.mode
                if mode == "drip-headers":
                    self.wfile.write(b"HTTP/1.1 200 OK\r\n")
                    return self.drip(b"Content-Type: application/json\r\n" * 100)
                if mode == "drip-body":
                    data = json.dumps(completion("The answer is 5.")).encode()
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    return self.drip(data)
                if mode == "huge-int":
                    data = b'{"choices": [{"message": {"content": "x"}}], "usage": {"prompt_tokens": ' + b"9" * 5000 + b"}}"
                elif mode == "deep":
                    data = b'{"choices": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
                else:  # "length": every other question's rationale cut at max_tokens
                    q = body["messages"][-1]["content"]
                    i = next(i for i, (text, _) in enumerate(QUESTIONS) if text in q)
                    text = f"We work it out. The answer is {QUESTIONS[i][1]}."
                    data = json.dumps(completion(text, "length" if i % 2 else "stop")).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                return None

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self) -> None:
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def hostile():
    servers: list[HostileServer] = []

    def make(mode: str) -> HostileServer:
        servers.append(HostileServer(mode))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


def _client(server: HostileServer, **api: Any) -> ChatClient:
    cfg = TeacherApiConfig(**{"backoff_base_s": 0.01, "backoff_max_s": 0.02, "max_retries": 1, **api})
    return ChatClient(server.base_url, None, "m", cfg, sleep=lambda s: None)


@pytest.mark.parametrize("mode", ["drip-headers", "drip-body"])
def test_a_dripping_server_is_cut_at_the_total_deadline_and_retried(hostile, mode):
    """One byte per 0.2 s never trips a 1.5 s socket timeout; the request's deadline does."""
    server = hostile(mode)
    client = _client(server, timeout_s=1.5)
    with pytest.raises(TeacherUnavailable, match=r"giving up after 2 attempts .*timeout: no complete reply within "
                                                 r"teacher\.api\.timeout_s=1\.5 s"):
        client.complete([{"role": "user", "content": "hi"}], Sampling(0.0, 1.0, 8))
    assert client.stats.as_dict()["retried_by_cause"] == {"timeout": 1} and server.requests == 2


@pytest.mark.parametrize("mode, says", [("huge-int", "an integer of 5,000 digits"), ("deep", "levels deep")])
def test_a_hostile_reply_is_a_counted_bad_response(hostile, mode, says):
    server = hostile(mode)
    client = _client(server, timeout_s=30)
    with pytest.raises(TeacherUnavailable, match=f"bad response: not a usable chat completion: .*{says}"):
        client.complete([{"role": "user", "content": "hi"}], Sampling(0.0, 1.0, 8))
    assert client.stats.as_dict()["retried_by_cause"] == {"bad response": 1} and server.requests == 2


@pytest.mark.parametrize("keep", [False, True])
def test_rationales_cut_at_max_tokens_are_dropped_and_counted_unless_kept(tmp_path, hostile, monkeypatch, keep):
    server = hostile("length")
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    questions = tmp_path / "questions.json"
    questions.write_text(json.dumps([{"instruction": q, "output": "", "label": a} for q, a in QUESTIONS]))
    recipe = validate_recipe({"name": "t", "data": {"source": {"name": "svamp", "params": {"files": {"train": str(questions)}}}},
                              "teacher": {"model": "m", "rationales": "all", "keep_truncated": keep,
                                          "api": {"api_key_env": None, "timeout_s": 30}}}, "<test>")
    c = teach(recipe, tmp_path / "out", quiet=True)["splits"]["train"]
    assert c["rationales"] == 4 and c["dropped_truncated"] == (0 if keep else 2)
    assert c["kept"] == (4 if keep else 2)
    assert c["kept"] + sum(c[k] for k in c if k.startswith("dropped_") and k != "dropped_ids") == c["rationales"]
    kept = json.loads((tmp_path / "out" / "train.json").read_text())
    assert [r["label"] for r in kept] == ([a for _, a in QUESTIONS] if keep else ["33", "48"])


def test_401_without_a_key_variable_says_what_to_set(hostile):
    from kpod.teach.base import TeacherError

    class Deny(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(401)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"no")

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Deny)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        cfg = TeacherApiConfig(api_key_env=None, max_retries=0, timeout_s=30)
        client = ChatClient(f"http://127.0.0.1:{httpd.server_address[1]}/v1", None, "m", cfg)
        with pytest.raises(TeacherError, match=r"HTTP 401 \(the server wants a key: set teacher\.api\.api_key_env"):
            client.complete([{"role": "user", "content": "hi"}], Sampling(0.0, 1.0, 8))
    finally:
        httpd.shutdown()
        httpd.server_close()
