"""Teacher generation (`kpod teach`): cache, limits, chat-completions client, filtering, and end
to end against a real loopback HTTP server answering with a tiny local model, crash included."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from kpod.cli import app
from kpod.data.benchmarks import BenchmarkParams, Svamp
from kpod.eval.answers import NumericExtractor
from kpod.recipe import load_recipe, validate_recipe
from kpod.teach.base import TeacherError, TeacherUnavailable
from kpod.teach.cache import CacheError, TeacherCache
from kpod.teach.filter import Question, filter_questions
from kpod.teach.openai import ChatClient
from kpod.teach.prompts import Sampling, plain_text
from kpod.teach.ratelimit import TokenBucket, backoff_delay, parse_retry_after
from kpod.teach.run import teach
from kpod.teacher_config import TeacherApiConfig, TeacherHFConfig

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data"

# (question, gold): small word problems in the MCC-KD format the benchmark sources read
QUESTIONS = [
    ("Dan has 15 caps and finds 18 more. How many caps does he have?", "33"),
    ("Mia scored 21 points, 7 in each game. How many games did she play?", "3"),
    ("A box holds 26 pens and Ann adds 2 boxes of 9 pens. How many pens are there?", "44"),
    ("Tom read 12 pages on Monday and 30 on Tuesday. How many pages did he read?", "42"),
    ("There are 40 birds and 13 fly away. How many birds are left?", "27"),
    ("Each bag has 6 apples. How many apples are in 8 bags?", "48"),
]


# --------------------------------------------------------------------------------------
# fixtures: data file, tiny teacher model, loopback chat-completions server
# --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def questions_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "questions.json"
    path.write_text(json.dumps([{"instruction": q, "output": "", "label": a} for q, a in QUESTIONS]))
    return path


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory) -> Path:
    """A tiny random-weight Llama with a BPE tokenizer, saved like any Hugging Face model."""
    from kpod.data.tokenize import train_tokenizer
    from kpod.models.config import TinyModelConfig
    from kpod.models.student import Student, build_tiny, save_student

    texts = [f"Q: {q}\nA: Let's think step by step. {a}" for q, a in QUESTIONS] * 4
    tok = train_tokenizer(texts, 200)
    model = build_tiny("tiny:llama", TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64), tok)
    path = tmp_path_factory.mktemp("teacher") / "tiny-teacher"
    save_student(Student(model, tok, False, "tiny:llama"), str(path))
    return path


class ChatServer:
    """``POST /v1/chat/completions`` on 127.0.0.1, answered by ``reply(body)``. Scripted failures
    (status, headers) are served first; with ``hang_after`` set, later requests block until
    ``release`` is set (so a client can be killed with requests in flight)."""

    def __init__(self, reply: Callable[[dict[str, Any]], str]) -> None:
        self.reply = reply
        self.failures: deque[tuple[int, dict[str, str]]] = deque()
        self.hang_after: int | None = None
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.bodies: list[dict[str, Any]] = []
        self.auth: list[str | None] = []
        self.started = self.hanging = self.answered = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def send(self, status: int, doc: dict[str, Any], headers: dict[str, str] | None = None) -> None:
                data = json.dumps(doc).encode()
                self.send_response(status)
                for k, v in {"Content-Type": "application/json", **(headers or {})}.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    outer.bodies.append(body)
                    outer.auth.append(self.headers.get("Authorization"))
                    fail = outer.failures.popleft() if outer.failures else None
                if self.path != "/v1/chat/completions":
                    return self.send(404, {"error": {"message": f"no route {self.path}"}})
                if fail is not None:
                    return self.send(fail[0], {"error": {"message": "scripted failure"}}, fail[1])
                problem = _protocol_problem(body)
                if problem:
                    return self.send(400, {"error": {"message": problem}})
                with outer.lock:
                    outer.started += 1
                    hang = outer.hang_after is not None and outer.started > outer.hang_after
                    outer.hanging += hang
                if hang:
                    outer.release.wait(timeout=120)
                text = outer.reply(body)
                prompt = " ".join(m["content"] for m in body["messages"])
                try:
                    self.send(200, {
                        "id": f"chatcmpl-{outer.started}", "object": "chat.completion", "model": body["model"],
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": len(prompt.split()), "completion_tokens": len(text.split()),
                                  "total_tokens": len(prompt.split()) + len(text.split())},
                    })
                except (BrokenPipeError, ConnectionResetError):  # the client was killed meanwhile
                    return None
                with outer.lock:
                    outer.answered += 1
                return None

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def _protocol_problem(body: dict[str, Any]) -> str | None:
    if not isinstance(body.get("model"), str):
        return "model: required string"
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs or msgs[-1].get("role") != "user":
        return "messages: a list ending with a user message"
    if any(m.get("role") not in ("system", "user", "assistant") or not isinstance(m.get("content"), str) for m in msgs):
        return "messages: each needs a role and string content"
    if body.get("n", 1) != 1 or not isinstance(body.get("max_tokens"), int) or "temperature" not in body:
        return "n, max_tokens, temperature"
    return None


def model_reply(model_dir: Path) -> Callable[[dict[str, Any]], str]:
    """Answers with the tiny local model (kpod's own HF teacher code), a few tokens per request."""
    from kpod.teach.local import HFTeacher

    teacher = HFTeacher(str(model_dir), TeacherHFConfig())
    lock = threading.Lock()

    def reply(body: dict[str, Any]) -> str:
        sampling = Sampling(float(body["temperature"]), float(body.get("top_p", 1.0)), min(body["max_tokens"], 8))
        seed = len(json.dumps(body["messages"])) + int(1000 * sampling.temperature)
        with lock:
            return teacher.generate([plain_text(body["messages"])], sampling, seed)[0].text

    return reply


@pytest.fixture
def server_factory():
    servers: list[ChatServer] = []

    def make(reply: Callable[[dict[str, Any]], str]) -> ChatServer:
        servers.append(ChatServer(reply))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


def teach_recipe(questions_file: Path, **teacher: Any) -> dict[str, Any]:
    base = {"model": "tiny-teacher", "max_tokens": 8, "api": {"concurrency": 2, "backoff_base_s": 0.01,
                                                              "backoff_max_s": 0.05, "timeout_s": 60}}
    for k, v in teacher.items():
        base[k] = {**base.get(k, {}), **v} if isinstance(v, dict) else v
    return {"name": "teach_test", "data": {"source": {"name": "svamp", "params": {"files": {"train": str(questions_file)}}}},
            "teacher": base}


def cache_rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# --------------------------------------------------------------------------------------
# cache
# --------------------------------------------------------------------------------------
def _row(key: str, sid: str = "s/0", index: int = 0) -> dict[str, Any]:
    return {"key": key, "sample_id": sid, "index": index, "completion": f"reply {key}"}


def test_cache_truncates_a_torn_tail_and_keeps_every_complete_row(tmp_path):
    path = tmp_path / "c.jsonl"
    complete = "".join(json.dumps(_row(k)) + "\n" for k in ("a", "b"))
    torn = '{"key": "c", "sample_id": "s/0", "ind'
    path.write_text(complete + torn)
    with TeacherCache(path) as cache:
        assert set(cache.rows) == {"a", "b"}
        assert cache.report.torn_tail_truncated_bytes == len(torn) and cache.report.torn_tail_repaired == 0
        assert path.read_text() == complete  # only the torn bytes went
        assert cache.append(_row("c"))
    with TeacherCache(path) as cache:
        assert set(cache.rows) == {"a", "b", "c"} and cache.report.torn_tail_truncated_bytes == 0
    assert path.read_text().startswith(complete)


def test_cache_repairs_a_complete_final_row_without_newline(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps(_row("a")) + "\n" + json.dumps(_row("b")))
    with TeacherCache(path) as cache:
        assert set(cache.rows) == {"a", "b"} and cache.report.torn_tail_repaired == 1
        cache.append(_row("c"))
    assert [r["key"] for r in cache_rows(path)] == ["a", "b", "c"]


def test_cache_corrupt_complete_line_is_an_error_naming_the_line(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps(_row("a")) + "\n{not json\n" + json.dumps(_row("b")) + "\n")
    with pytest.raises(CacheError, match=r"c\.jsonl:2: corrupt line"):
        TeacherCache(path).open()
    path.write_text(json.dumps({"key": "a"}) + "\n")
    with pytest.raises(CacheError, match=r"c\.jsonl:1: not a kpod teacher-cache row \(missing sample_id, index, completion\)"):
        TeacherCache(path).open()


def test_cache_dedups_keys_and_refuses_a_second_writer(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in (_row("a"), {**_row("a"), "completion": "later"}, _row("b"))))
    with TeacherCache(path) as cache:
        assert cache.rows["a"]["completion"] == "reply a"  # first row wins
        assert cache.report.duplicate_rows == 1 and cache.report.rows == 2
        size = path.stat().st_size
        assert cache.append({**_row("b"), "completion": "again"}) is False
        assert path.stat().st_size == size  # nothing written for a cached key
        with pytest.raises(CacheError, match="in use by another kpod teach process"):
            TeacherCache(path).open()
    TeacherCache(path).open()  # the lock went with the first one


def _disk_full_after(monkeypatch, n_bytes: int, name: str) -> list[int]:
    """``os.write`` to the file called ``name`` writes at most ``n_bytes`` more bytes, then fails
    with ENOSPC (writes to anything else pass through)."""
    import errno

    left = [n_bytes]
    real_write = os.write

    def write(fd, data):
        if not os.readlink(f"/proc/self/fd/{fd}").endswith("/" + name):
            return real_write(fd, data)
        if left[0] <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        n = real_write(fd, bytes(data[: left[0]]))
        left[0] -= n
        return n

    monkeypatch.setattr(os, "write", write)
    return left


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the file by /proc/self/fd")
def test_cache_append_on_a_full_disk_leaves_no_torn_row_and_fails_every_later_append(tmp_path, monkeypatch):
    from kpod.runs import RunWriteError

    path = tmp_path / "c.jsonl"
    with TeacherCache(path) as cache:
        cache.append(_row("a"))
        before = path.read_bytes()
        _disk_full_after(monkeypatch, 10, "c.jsonl")  # 10 bytes of the next row reach the disk, then it is full
        with pytest.raises(RunWriteError, match=r"cannot write .*c\.jsonl: No space left on device \[ENOSPC\] \(the disk is full: [0-9.]+ MiB free there\)"):
            cache.append(_row("b"))
        assert path.read_bytes() == before  # the 10 bytes were cut off again
        assert "b" not in cache
        monkeypatch.undo()  # even with space again, this cache object refuses: its caller must stop
        with pytest.raises(RunWriteError, match="No space left"):
            cache.append(_row("c"))
        assert path.read_bytes() == before
    with TeacherCache(path) as cache:  # a new run resumes from every row written before
        assert set(cache.rows) == {"a"} and cache.report.torn_tail_truncated_bytes == 0
        assert cache.append(_row("b"))
    assert [r["key"] for r in cache_rows(path)] == ["a", "b"]


# --------------------------------------------------------------------------------------
# limits
# --------------------------------------------------------------------------------------
def test_token_bucket_spaces_requests_and_caps_bursts():
    now = [0.0]
    bucket = TokenBucket(rate_per_s=2.0, capacity=2, clock=lambda: now[0])
    assert [bucket.reserve() for _ in range(4)] == [0.0, 0.0, 0.5, 1.0]  # burst of 2, then 1 per 0.5 s
    now[0] = 100.0  # a long idle refills to the capacity, not beyond
    assert [bucket.reserve() for _ in range(3)] == [0.0, 0.0, 0.5]
    waited: list[float] = []
    assert bucket.acquire(waited.append) == 1.0 and waited == [1.0]


def test_backoff_grows_with_jitter_and_is_capped_and_retry_after_parses():
    rng = random.Random(0)
    for retry in range(8):
        d = backoff_delay(retry, base=1.0, cap=10.0, rng=rng)
        full = min(10.0, 2.0**retry)
        assert full / 2 <= d <= full
    assert parse_retry_after("7") == 7.0 and parse_retry_after(" 0.5 ") == 0.5
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=lambda: 1445412480.0) == pytest.approx(10.0)
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


# --------------------------------------------------------------------------------------
# chat-completions client against the loopback server
# --------------------------------------------------------------------------------------
def _client(server: ChatServer, sleeps: list[float], **api: Any) -> ChatClient:
    cfg = TeacherApiConfig(**{"backoff_base_s": 0.5, "backoff_max_s": 4.0, "timeout_s": 30, **api})
    return ChatClient(server.base_url, "test-key", "tiny-teacher", cfg, sleep=sleeps.append, rng=random.Random(0))


def test_client_honours_retry_after_on_429_and_backs_off_on_500(server_factory, tiny_teacher):
    server = server_factory(model_reply(tiny_teacher))
    server.failures.extend([(429, {"Retry-After": "7"}), (500, {}), (503, {"Retry-After": "2"})])
    sleeps: list[float] = []
    client = _client(server, sleeps)
    c = client.complete([{"role": "user", "content": "Q: 2 + 3? A: Let's think step by step."}], Sampling(0.0, 1.0, 8))
    assert sleeps[0] == 7.0 and sleeps[2] == 2.0  # the server's Retry-After, as given
    assert 0.5 <= sleeps[1] <= 1.0  # second attempt: backoff 0.5·2¹ with jitter in [d/2, d]
    assert c.attempts == 4 and c.prompt_tokens == 10 and c.completion_tokens == len(c.text.split())
    assert client.stats.as_dict()["retried_by_cause"] == {"HTTP 429": 1, "HTTP 500": 1, "HTTP 503": 1}
    assert len(server.bodies) == 4 and set(server.auth) == {"Bearer test-key"}
    assert server.bodies[-1]["model"] == "tiny-teacher" and server.bodies[-1]["temperature"] == 0.0


def test_client_4xx_is_an_immediate_clear_error(server_factory):
    server = server_factory(lambda body: "unused")
    server.failures.append((401, {}))
    sleeps: list[float] = []
    with pytest.raises(TeacherError, match=r"HTTP 401 \(check OPENAI_API_KEY\): .*scripted failure"):
        _client(server, sleeps).complete([{"role": "user", "content": "hi"}], Sampling(0.0, 1.0, 8))
    assert len(server.bodies) == 1 and sleeps == []  # no retry loop


def test_client_gives_up_after_max_retries(server_factory):
    server = server_factory(lambda body: "unused")
    server.failures.extend([(502, {})] * 5)
    sleeps: list[float] = []
    with pytest.raises(TeacherUnavailable, match=r"giving up after 3 attempts .*HTTP 502"):
        _client(server, sleeps, max_retries=2).complete([{"role": "user", "content": "hi"}], Sampling(0.0, 1.0, 8))
    assert len(server.bodies) == 3 and len(sleeps) == 2


# --------------------------------------------------------------------------------------
# filtering
# --------------------------------------------------------------------------------------
@pytest.mark.skipif(not SHARED.exists(), reason="../shared/data not present")
def test_filtering_real_svamp_rationales_matches_the_benchmark_loader(tmp_path):
    """The ten GPT-3.5 rationales per SVAMP question, filtered as teacher replies, give the same
    counts as item 2's loader with the same modes, question by question."""
    rows = json.loads((SHARED / "mcc_kd/SVAMP/train.json").read_text())[:60]
    sub = tmp_path / "svamp60.json"
    sub.write_text(json.dumps(rows))
    ex = NumericExtractor()
    for mode in ("first", "all", "correct"):
        qs = [Question(f"svamp/train/{i:05d}", r["instruction"].strip(), r["label"], dict(enumerate(r["output"])))
              for i, r in enumerate(rows)]
        kept, c = filter_questions(qs, mode, ex)
        assert c["rationales"] == 600 == c["kept"] + c["dropped_empty"] + c["dropped_wrong_answer"] + c["dropped_not_first"]
        src = Svamp(BenchmarkParams(files={"train": str(sub)}, rationales=mode))
        recs = src.load()["train"]
        loader = src.report["splits"]["train"]
        assert c["kept"] == loader["kept"] == len(recs)
        assert c["questions_dropped"] == loader["questions_dropped"] == len(c["dropped_ids"])
        per_question: dict[str, int] = {}
        for r in recs:
            per_question[r.sample_id.split("#")[0]] = per_question.get(r.sample_id.split("#")[0], 0) + 1
        assert per_question == {q.sample_id: len(texts) for q, texts in kept}
        if mode == "correct":
            assert c["dropped_wrong_answer"] == loader["dropped_wrong_answer"] > 0 and c["questions_dropped"] > 0


def test_filter_modes_count_empty_wrong_and_not_first():
    ex = NumericExtractor()
    q = Question("q/1", "2 + 3?", "5", {0: "2 + 3 = 6. The answer is 6.", 1: "  ", 2: "2 + 3 = 5. The answer is 5."})
    first, c = filter_questions([q], "first", ex)
    assert first[0][1] == ["2 + 3 = 6. The answer is 6."] and c["dropped_not_first"] == 2
    _, c = filter_questions([q], "all", ex)
    assert c["kept"] == 2 and c["dropped_empty"] == 1
    kept, c = filter_questions([q], "correct", ex)
    assert kept[0][1] == ["2 + 3 = 5. The answer is 5."]
    assert (c["dropped_wrong_answer"], c["dropped_empty"], c["teacher_first_sample_accuracy"]) == (1, 1, 0.0)
    q.replies = {0: "The answer is 4."}
    kept, c = filter_questions([q], "correct", ex)
    assert kept == [] and c["dropped_ids"] == ["q/1"] and c["questions_dropped"] == 1


# --------------------------------------------------------------------------------------
# end to end
# --------------------------------------------------------------------------------------
def _wait_for(cond: Callable[[], bool], proc: subprocess.Popen[str], what: str, deadline_s: float = 120) -> None:
    end = time.monotonic() + deadline_s
    while not cond():
        if proc.poll() is not None:
            raise AssertionError(f"kpod teach exited ({proc.returncode}) before {what}: {proc.communicate()[1][-2000:]}")
        if time.monotonic() > end:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def test_teach_over_http_survives_a_kill_mid_run_and_resumes_without_duplicates_or_loss(
    tmp_path, server_factory, tiny_teacher, questions_file
):
    server = server_factory(model_reply(tiny_teacher))
    recipe = tmp_path / "teach.yaml"
    recipe.write_text(yaml.safe_dump(teach_recipe(questions_file, samples=2, temperature=0.8, rationales="all",
                                                  limit=5, price_per_1k_input=1.0, price_per_1k_output=2.0)))
    out = tmp_path / "out"
    cache = out / "teacher_cache.jsonl"
    env = {**os.environ, "OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY": "test-key", "HF_HUB_OFFLINE": "1",
           "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "kpod.cli", "teach", str(recipe), "--out", str(out), "-q"]

    # run 1: the server answers 3 requests, then holds the next ones; kill -9 with them in flight
    server.hang_after = 3
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: _lines(cache) >= 3 and server.hanging >= 1, proc, "3 cached replies and a request in flight")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    before = cache.read_bytes()
    assert before.count(b"\n") == 3 and before.endswith(b"\n")
    torn = b'{"key": "deadbeef", "sample_id": "svamp/train/00004", "index": 1, "compl'
    with open(cache, "ab") as f:  # as if the process had died in the middle of a write
        f.write(torn)

    # run 2: the same command, with a 429 and a 500 on the way
    server.hang_after = None
    server.release.set()
    server.failures.extend([(429, {"Retry-After": "0"}), (500, {})])
    n_bodies = len(server.bodies)
    res = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]

    after = cache.read_bytes()
    assert after.startswith(before) and torn not in after  # old rows untouched, torn bytes gone
    rows = cache_rows(cache)
    keys = [r["key"] for r in rows]
    pairs = sorted((r["sample_id"], r["index"]) for r in rows)
    assert len(keys) == len(set(keys)) == 10  # 5 questions × 2 samples, no duplicate
    assert pairs == sorted((f"svamp/train/{i:05d}", k) for i in range(5) for k in range(2))
    summary = json.loads((out / "teach_summary.json").read_text())
    assert summary["cache"]["rows"] == 3 and summary["cache"]["torn_tail_truncated_bytes"] == len(torn)
    assert summary["rounds"] == [{"round": "samples", "jobs": 10, "cached": 3, "generated": 7}]
    assert summary["requests"] == {"requests": 9, "retries": 2, "retried_by_cause": {"HTTP 429": 1, "HTTP 500": 1},
                                   "backoff_seconds": summary["requests"]["backoff_seconds"]}
    assert len(server.bodies) - n_bodies == 9  # 7 replies + 2 scripted failures: nothing asked twice
    # tokens and cost: the server's usage, summed; this run's 7 rows are logged one per line
    p, c = sum(r["prompt_tokens"] for r in rows), sum(r["completion_tokens"] for r in rows)
    assert (summary["all_replies"]["prompt_tokens"], summary["all_replies"]["completion_tokens"]) == (p, c)
    assert summary["all_replies"]["cost_usd"] == pytest.approx(p / 1000 + 2 * c / 1000)
    log = [e for e in cache_rows(out / "teach_log.jsonl") if e["run"] == summary["run"]]
    assert len(log) == 7 and log[-1]["total_prompt_tokens"] == summary["this_run"]["prompt_tokens"]
    assert summary["this_run"]["prompt_tokens"] == sum(r["prompt_tokens"] for r in rows[3:])
    # the data set: every question with its non-empty replies, in sample order, under its own id
    data = json.loads((out / "train.json").read_text())
    by_key = {(r["sample_id"], r["index"]): r["completion"].strip() for r in rows}
    expect = {f"svamp/train/{i:05d}": [t for t in (by_key[(f"svamp/train/{i:05d}", k)] for k in range(2)) if t]
              for i in range(5)}
    assert {d["id"]: d["output"] for d in data} == {k: v for k, v in expect.items() if v}
    assert "kept" in res.stdout and "teach_summary.json" in res.stdout


def test_teach_resamples_questions_without_a_correct_rationale(tmp_path, server_factory, questions_file, monkeypatch):
    """rationales: correct with resample: 2 — a scripted teacher gets Q0 right only when
    re-sampled and Q1 never; Q2-Q3 right at once."""
    gold = dict(QUESTIONS)

    def reply(body: dict[str, Any]) -> str:
        q = next(q for q in gold if q in body["messages"][-1]["content"])
        i = [q for q, _ in QUESTIONS].index(q)
        right = i >= 2 or (i == 0 and body["temperature"] == 0.7)
        return f"We add. The answer is {gold[q] if right else '1000'}."

    server = server_factory(reply)
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    recipe = validate_recipe(teach_recipe(questions_file, limit=4, resample=2), "<test>")
    s = teach(recipe, tmp_path / "out", quiet=True)
    assert [(r["round"], r["jobs"], r["generated"]) for r in s["rounds"]] == [
        ("samples", 4, 4), ("resample 1", 2, 2), ("resample 2", 1, 1)]
    assert [b["temperature"] for b in server.bodies] == [0.0] * 4 + [0.7] * 3
    c = s["splits"]["train"]
    assert (c["kept"], c["dropped_wrong_answer"], c["questions_dropped"], c["resampled_questions"]) == (3, 4, 1, 2)
    assert c["dropped_ids"] == ["svamp/train/00001"] and c["teacher_first_sample_accuracy"] == 0.5
    # the output is a data set the svamp source reads, with the teacher run's sample_ids
    src = Svamp(BenchmarkParams(files={"train": c["file"]}, rationales="correct"))
    recs = src.load()["train"]
    assert [r.sample_id for r in recs] == ["svamp/train/00000", "svamp/train/00002", "svamp/train/00003"]
    assert src.report["splits"]["train"]["dropped_wrong_answer"] == 0
    # a second run asks nothing: every round is decided from the cache alone
    again = teach(recipe, tmp_path / "out", quiet=True)
    assert len(server.bodies) == 7 and [r["generated"] for r in again["rounds"]] == [0, 0, 0]
    assert again["splits"]["train"]["kept"] == 3


def test_teach_with_a_local_hf_teacher(tmp_path, tiny_teacher, questions_file):
    raw = teach_recipe(questions_file, backend="hf", model=str(tiny_teacher), samples=2, temperature=0.9,
                       rationales="all", limit=3, hf={"batch_size": 4}, system="You are a careful tutor.",
                       few_shot=[{"question": "1 + 1?", "rationale": "One and one make 2.", "answer": "2"}])
    s = teach(validate_recipe(raw, "<test>"), tmp_path / "out", quiet=True)
    rows = cache_rows(tmp_path / "out" / "teacher_cache.jsonl")
    assert sorted((r["sample_id"], r["index"]) for r in rows) == [(f"svamp/train/{i:05d}", k) for i in range(3) for k in range(2)]
    assert s["teacher"]["prompt_format"] == "plain" and s["teacher"]["few_shot"] == 1
    # prompt tokens are counted by the teacher's tokenizer: BOS + the rendered plain-text prompt
    from transformers import AutoTokenizer

    from kpod.teach.prompts import build_messages

    tok = AutoTokenizer.from_pretrained(str(tiny_teacher))
    cfg = validate_recipe(raw, "<test>").teacher
    text = plain_text(build_messages(cfg, cfg.few_shot, QUESTIONS[0][0]))
    assert text.startswith("You are a careful tutor.\n\nQ: 1 + 1?\nA: Let's think step by step. One and one make 2.")
    row0 = next(r for r in rows if r["sample_id"] == "svamp/train/00000")
    assert row0["prompt_tokens"] == 1 + len(tok(text, add_special_tokens=False)["input_ids"])
    assert all(0 < r["completion_tokens"] <= 8 for r in rows)
    assert s["this_run"]["completion_tokens"] == sum(r["completion_tokens"] for r in rows)
    again = teach(validate_recipe(raw, "<test>"), tmp_path / "out", quiet=True)
    assert again["this_run"]["rows"] == 0 and again["all_replies"]["rows"] == 6


# --------------------------------------------------------------------------------------
# CLI and recipes
# --------------------------------------------------------------------------------------
def test_teach_cli_bad_input_exits_2_naming_the_cause(tmp_path, questions_file, monkeypatch):
    runner = CliRunner()
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(teach_recipe(questions_file)))
    res = runner.invoke(app, ["teach", str(path), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "environment variable OPENAI_BASE_URL is not set" in res.output
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    res = runner.invoke(app, ["teach", str(path), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "OPENAI_API_KEY is not set" in res.output
    res = runner.invoke(app, ["teach", str(path), "--set", "teacher.splits=[validation]", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "teacher.splits" in res.output and "'validation'" in res.output
    no_teacher = tmp_path / "plain.yaml"
    no_teacher.write_text(yaml.safe_dump({"data": teach_recipe(questions_file)["data"]}))
    res = runner.invoke(app, ["teach", str(no_teacher)])
    assert res.exit_code == 2 and "teacher: the recipe has no teacher section" in res.output
    res = runner.invoke(app, ["validate", str(path), "--set", "teacher.samples=3"])
    assert res.exit_code == 2 and "temperature" in res.output


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the file by /proc/self/fd")
def test_teach_cli_full_disk_exits_1_and_the_rerun_resumes(tmp_path, server_factory, questions_file, monkeypatch):
    server = server_factory(lambda body: "We add. The answer is 5.")
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    path, out = tmp_path / "r.yaml", tmp_path / "o"
    path.write_text(yaml.safe_dump(teach_recipe(questions_file, limit=4, rationales="all", api={"concurrency": 1})))
    cache = out / "teacher_cache.jsonl"
    first_row = len(json.dumps({"key": "k" * 64}))  # well under one row: the first append fails part-way
    _disk_full_after(monkeypatch, first_row, "teacher_cache.jsonl")
    res = CliRunner().invoke(app, ["teach", str(path), "--out", str(out), "-q"])
    assert res.exit_code == 1, res.output
    msg = " ".join(res.output.split())
    assert "teacher_cache.jsonl: No space left on device [ENOSPC] (the disk is full: " in msg
    assert "rerun the same command to resume" in msg and "Traceback" not in res.output
    assert cache.read_bytes() == b""  # the torn first row was cut off
    monkeypatch.undo()
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    res = CliRunner().invoke(app, ["teach", str(path), "--out", str(out), "-q"])
    assert res.exit_code == 0, res.output
    assert sorted(r["sample_id"] for r in cache_rows(cache)) == [f"svamp/train/{i:05d}" for i in range(4)]


@pytest.mark.parametrize("name", ["svamp_openai.yaml", "svamp_local_hf.yaml"])
def test_shipped_teach_recipes_validate(name):
    r = load_recipe(ROOT / "recipes" / "teach" / name)
    assert r.teacher is not None and r.data.source.name == "svamp"
    assert r.data.source.params.rationales == "first"  # every question reaches the teacher


def test_training_recipe_reads_the_teach_output():
    r = load_recipe(ROOT / "recipes" / "teach" / "svamp_train_on_teacher.yaml")
    assert r.teacher is None and r.data.source.params.files["train"] == "data/teach/svamp/train.json"
    assert r.data.source.params.rationales == "all" and r.data.source.params.files["validation"].endswith("SVAMP/dev.json")


def test_local_hf_teacher_uses_the_chat_template_when_there_is_one(tmp_path, tiny_teacher, questions_file):
    import shutil

    from transformers import AutoTokenizer

    chat_dir = tmp_path / "chat-teacher"
    shutil.copytree(tiny_teacher, chat_dir)
    tok = AutoTokenizer.from_pretrained(str(chat_dir))
    tok.chat_template = "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}<s>assistant:"
    tok.save_pretrained(str(chat_dir))
    raw = teach_recipe(questions_file, backend="hf", model=str(chat_dir), limit=2, rationales="first")
    s = teach(validate_recipe(raw, "<test>"), tmp_path / "out", quiet=True)
    assert s["teacher"]["prompt_format"] == "chat"
    rows = {r["sample_id"]: r for r in cache_rows(tmp_path / "out" / "teacher_cache.jsonl")}
    text = tok.apply_chat_template([{"role": "user", "content": f"Q: {QUESTIONS[1][0]}\nA: Let's think step by step."}],
                                   tokenize=False, add_generation_prompt=True)
    assert text.startswith("<s>user: Q: Mia") and text.endswith("<s>assistant:")
    assert rows["svamp/train/00001"]["prompt_tokens"] == len(tok(text, add_special_tokens=False)["input_ids"])
    raw["teacher"]["hf"] = {"prompt_format": "chat"}
    raw["teacher"]["model"] = str(tiny_teacher)  # no template: asking for chat is an error naming the field
    with pytest.raises(TeacherError, match="teacher.hf.prompt_format"):
        teach(validate_recipe(raw, "<test>"), tmp_path / "out2", quiet=True)
