"""Teacher backends: an OpenAI-compatible API (concurrent requests) or a local Hugging Face model
(batched generation). Each turns a prompt into its request and runs a list of :class:`Job` s,
handing every reply to ``done`` as it arrives (so it is cached before the next one)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from kpod.progress import Reporter
from kpod.teach.base import Completion
from kpod.teach.filter import Question
from kpod.teach.prompts import Sampling
from kpod.teacher_config import TeacherConfig


@dataclass(frozen=True)
class Job:
    """One request to the teacher: the ``index``-th sample of a question, under ``sampling``;
    ``key`` is its cache key."""

    key: str
    split: str
    question: Question
    index: int
    request: Any  # messages (openai) or the rendered text (hf)
    sampling: Sampling
    role: str | None = None  # contrastive decoding: "factual" or "counterfactual"
    answer: str | None = None  # contrastive decoding: the answer the prompt states


class Backend:
    """A teacher: ``identity`` goes into every cache key, ``info`` into the summary."""

    identity: dict[str, Any]
    info: dict[str, Any]

    def request(self, messages: list[dict[str, str]]) -> Any:
        raise NotImplementedError

    def run(self, jobs: list[Job], done: Callable[[Job, Completion], None], seed: int) -> None:
        raise NotImplementedError

    def request_stats(self) -> dict[str, Any] | None:
        """Requests, retries and errors of this run (an API backend), for the summary."""
        return None


def make_backend(cfg: TeacherConfig, reporter: Reporter) -> Backend:
    """The backend ``teacher.backend`` names."""
    return HFBackend(cfg) if cfg.backend == "hf" else ApiBackend(cfg, reporter)


class ApiBackend(Backend):
    """An OpenAI-compatible chat endpoint, ``teacher.api.concurrency`` requests at a time."""

    def __init__(self, cfg: TeacherConfig, reporter: Reporter) -> None:
        from kpod.teach.openai import ChatClient, endpoint_from_env

        self.reporter = reporter
        base, key = endpoint_from_env(cfg.api)
        self.client = ChatClient(base, key, cfg.model, cfg.api)
        self.identity = {"backend": "openai", "model": cfg.model}
        self.info = {"endpoint": self.client.url}
        self.concurrency = cfg.api.concurrency

    def request(self, messages: list[dict[str, str]]) -> Any:
        return {"messages": messages}

    def request_stats(self) -> dict[str, Any] | None:
        return self.client.stats.as_dict()

    def run(self, jobs: list[Job], done: Callable[[Job, Completion], None], seed: int) -> None:
        stop = threading.Event()

        def one(job: Job) -> None:
            if stop.is_set():
                return
            done(job, self.client.complete(job.request["messages"], job.sampling))

        pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="teach")
        futures: list[Future[None]] = [pool.submit(one, j) for j in jobs]
        try:
            finished, _ = wait(futures, return_when=FIRST_EXCEPTION)
            failed = [f for f in finished if f.exception() is not None]
            if failed:
                raise failed[0].exception()  # type: ignore[misc]
        except KeyboardInterrupt:
            stop.set()
            in_flight = sum(1 for f in futures if f.running())
            self.reporter.warn(f"interrupted: waiting for {in_flight} request(s) in flight so their replies are "
                               "saved (Ctrl-C again abandons them)")
            raise
        finally:
            # on an error or Ctrl-C: start nothing new, let requests in flight finish (their
            # replies are appended, so nothing already paid for is lost)
            stop.set()
            pool.shutdown(wait=True, cancel_futures=True)


class HFBackend(Backend):
    """A local Hugging Face model, ``teacher.hf.batch_size`` prompts per batch, shortest first."""

    def __init__(self, cfg: TeacherConfig) -> None:
        from kpod.teach.local import HFTeacher

        self.teacher = HFTeacher(cfg.model, cfg.hf, cfg.gguf_file)
        self.batch_size = cfg.hf.batch_size
        self.contrastive = cfg.hf.contrastive
        self.identity = {"backend": "hf", "model": cfg.model, "revision": cfg.hf.revision}
        if cfg.gguf_file is not None:  # only then, so existing reply caches keep their keys
            self.identity["gguf_file"] = cfg.gguf_file
        self.info = {"prompt_format": self.teacher.prompt_format, "device": str(self.teacher.device)}

    def request(self, messages: list[dict[str, str]]) -> Any:
        return {"text": self.teacher.render(messages)}

    def run(self, jobs: list[Job], done: Callable[[Job, Completion], None], seed: int) -> None:
        order = sorted(jobs, key=lambda j: len(j.request["text"]))  # less padding
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            texts = [j.request["text"] for j in batch]
            if self.contrastive is not None:  # every request of the run is then a contrastive one
                contrasts = [j.request["contrast"] for j in batch]
                outs = self.teacher.generate_contrastive(texts, contrasts, batch[0].sampling.max_tokens, self.contrastive)
            else:
                batch_seed = (int(batch[0].key[:12], 16) + seed) % 2**31  # reproducible per batch
                outs = self.teacher.generate(texts, batch[0].sampling, batch_seed)
            for j, c in zip(batch, outs):
                done(j, c)
