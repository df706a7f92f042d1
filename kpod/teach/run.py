"""``kpod teach``: questions of the data source → teacher rationales → filtered data set.

::

    OUT/
      teacher_cache.jsonl   append-only replies, one per cache key (teacher.cache moves it)
      teach_log.jsonl       one line per reply generated: tokens, attempts, running totals, cost
      <split>.json          the kept rationales, MCC-KD format {id, instruction, output, label}
      <split>_counterfactual.json   teacher.hf.contrastive: rationales of the perturbed answers
      teach_summary.json    teacher, prompt, sampling, cache, requests, tokens, cost, counts
      teach.resolved.yaml   the validated recipe

Generation is resumable: rerunning the same command sends only the requests whose key is not
in the cache, so a crash or Ctrl-C loses at most the replies in flight and duplicates none.
With ``rationales: correct`` and ``resample: k``, a question with no correct sample gets up to
k more at ``resample_temperature``, one round at a time (spec §10(m)); each round is decided
from the cache alone, so a resumed run makes the same decisions. With ``teacher.hf.contrastive``
the local teacher decodes SCOTT's answer-conditioned rationales (kpod.teach.counterfactual).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kpod import registry
from kpod.data.records import DataError, Record
from kpod.progress import Reporter
from kpod.recipe import RecipeError, build_component, dump_recipe
from kpod.runs import MetricsWriter, atomic_write_text, write_json
from kpod.teach.base import Completion, TeacherUnavailable
from kpod.teach.cache import TeacherCache
from kpod.teach.counterfactual import (
    ROLES,
    answers,
    contrastive_request,
    counterfactual_rows,
    perturbed_answer,
)
from kpod.teach.filter import Question, filter_questions, is_correct
from kpod.teach.prompts import Sampling, build_messages, cache_key, load_few_shot
from kpod.teacher_config import FewShotExample, TeacherConfig


@dataclass(frozen=True)
class Job:
    key: str
    split: str
    question: Question
    index: int
    request: Any  # messages (openai) or the rendered text (hf)
    sampling: Sampling
    role: str | None = None  # contrastive decoding: "factual" or "counterfactual"
    answer: str | None = None  # contrastive decoding: the answer the prompt states


class Tally:
    """Tokens and estimated cost of the replies generated in this run (thread-safe)."""

    def __init__(self, cfg: TeacherConfig) -> None:
        self.cfg = cfg
        self.rows = self.prompt = self.completion = self.without_usage = 0
        self._lock = threading.Lock()

    def add(self, c: Completion) -> dict[str, Any]:
        with self._lock:
            self.rows += 1
            if c.prompt_tokens is None or c.completion_tokens is None:
                self.without_usage += 1
            self.prompt += c.prompt_tokens or 0
            self.completion += c.completion_tokens or 0
            return self.as_dict()

    def as_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "prompt_tokens": self.prompt, "completion_tokens": self.completion,
                "rows_without_usage": self.without_usage, "cost_usd": estimate_cost(self.cfg, self.prompt, self.completion)}


def estimate_cost(cfg: TeacherConfig, prompt_tokens: int, completion_tokens: int) -> float | None:
    if cfg.price_per_1k_input is None or cfg.price_per_1k_output is None:
        return None
    return round(prompt_tokens / 1000 * cfg.price_per_1k_input + completion_tokens / 1000 * cfg.price_per_1k_output, 6)


# --------------------------------------------------------------------------------------
# questions
# --------------------------------------------------------------------------------------
def load_questions(recipe: Any, cfg: TeacherConfig, limit: int | None) -> tuple[dict[str, list[Question]], dict[str, Any]]:
    """The questions of ``teacher.splits`` (one per source question, keyed by its sample_id)."""
    source = build_component(registry.DATA_SOURCES, recipe.data.source)
    splits: dict[str, list[Record]] = source.load(recipe.data.step_splitter.mode)
    report = dict(source.report)
    out: dict[str, list[Question]] = {}
    seen: dict[str, str] = {}
    for split in cfg.splits:
        if split not in splits:
            raise DataError(f"teacher.splits: data.source ({recipe.data.source.name}) has no split {split!r} "
                            f"(it has: {', '.join(splits) or 'none'})")
        dropped = (report.get("splits") or {}).get(split, {}).get("questions_dropped", 0)
        if dropped:
            raise DataError(
                f"teacher.splits: data.source ({recipe.data.source.name}) dropped {dropped} {split!r} questions "
                "whose own rationales were all wrong, so the teacher would never see them; set "
                "data.source.params.rationales: first"
            )
        out[split] = _unique_questions(splits[split])[:limit]
        if not out[split]:
            raise DataError(f"teacher.splits: split {split!r} of data.source ({recipe.data.source.name}) is empty")
        for q in out[split]:
            other = seen.setdefault(q.sample_id, split)
            if other != split:
                raise DataError(f"teacher.splits: sample_id {q.sample_id!r} is in both {other!r} and {split!r}")
    return out, report


def _unique_questions(records: list[Record]) -> list[Question]:
    """One Question per source question: records ``base#k`` (one per source rationale) collapse
    to ``base`` when they share the question text."""
    seen: dict[str, Question] = {}
    for r in records:
        base = r.sample_id.split("#", 1)[0]
        q = seen.get(base)
        if q is not None and q.question == r.question:
            continue
        sid = base if q is None else r.sample_id
        seen[sid] = Question(sid, r.question, r.answer)
    return list(seen.values())


# --------------------------------------------------------------------------------------
# backends
# --------------------------------------------------------------------------------------
class _Backend:
    identity: dict[str, Any]
    info: dict[str, Any]

    def request(self, messages: list[dict[str, str]]) -> Any:
        raise NotImplementedError

    def run(self, jobs: list[Job], done: Callable[[Job, Completion], None], seed: int) -> None:
        raise NotImplementedError


class _ApiBackend(_Backend):
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


class _HFBackend(_Backend):
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


# --------------------------------------------------------------------------------------
# orchestration
# --------------------------------------------------------------------------------------
def teach(recipe: Any, out_dir: Path, *, limit: int | None = None, quiet: bool = False) -> dict[str, Any]:
    """Generate (or reuse) teacher rationales for the recipe's questions; write the filtered data
    set per split and ``teach_summary.json``; return the summary."""
    cfg: TeacherConfig | None = getattr(recipe, "teacher", None)
    if cfg is None:
        raise RecipeError("teacher: the recipe has no teacher section (see docs/teacher.md)")
    wall = time.perf_counter()
    run_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"  # tells this run's log lines apart
    reporter = Reporter(quiet)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "teach.resolved.yaml", dump_recipe(recipe))
    questions, source_report = load_questions(recipe, cfg, limit if limit is not None else cfg.limit)
    shots = load_few_shot(cfg)
    extractor = build_component(registry.ANSWER_EXTRACTORS, recipe.eval.extractor)
    backend: _Backend = _HFBackend(cfg) if cfg.backend == "hf" else _ApiBackend(cfg, reporter)
    cache_path = Path(cfg.cache) if cfg.cache else out_dir / "teacher_cache.jsonl"
    log = MetricsWriter(out_dir / "teach_log.jsonl")
    log_lock = threading.Lock()
    tally = Tally(cfg)
    first = Sampling(cfg.temperature, cfg.top_p, cfg.max_tokens)
    again = Sampling(cfg.resample_temperature, cfg.top_p, cfg.max_tokens)

    contrastive = cfg.hf.contrastive if cfg.backend == "hf" else None
    all_q = [(s, q) for s, qs in questions.items() for q in qs]
    wrong = {q.sample_id: perturbed_answer(q, contrastive, recipe.seed) for _, q in all_q} if contrastive else {}
    requests = _requests(cfg, backend, shots, [q for _, q in all_q], wrong)

    def job(split: str, q: Question, index: int, sampling: Sampling, role: str | None = None) -> Job:
        req, shown = requests[role, q.sample_id]
        return Job(cache_key(req, backend.identity, sampling, index), split, q, index, req, sampling, role, shown)

    with TeacherCache(cache_path) as cache:
        opened = cache.report.as_dict()
        if opened["torn_tail_truncated_bytes"] or opened["torn_tail_repaired"]:
            what = ("repaired (newline added)" if opened["torn_tail_repaired"]
                    else f"truncated ({opened['torn_tail_truncated_bytes']} bytes; that reply is requested again)")
            reporter.warn(f"{cache_path}: the last line was torn by an interrupted run: {what}")
        reporter.info(f"teacher cache {cache_path}: {len(cache.rows)} replies")
        rounds: list[dict[str, Any]] = []
        jobs_by_q: dict[str, list[Job]] = {}
        cf_jobs: dict[str, list[Job]] = {}  # the counterfactual decodes, apart from the rationales

        def run_round(name: str, jobs: list[Job], by_q: dict[str, list[Job]] = jobs_by_q) -> None:
            for j in jobs:
                by_q.setdefault(j.question.sample_id, []).append(j)
            pending = list({j.key: j for j in jobs if j.key not in cache}.values())
            rounds.append({"round": name, "jobs": len(jobs), "cached": len(jobs) - len(pending), "generated": len(pending)})
            if not pending:
                return
            with reporter.task(f"teach {name}", total=len(pending)) as advance:

                def done(j: Job, c: Completion) -> None:
                    cache.append(_row(j, c, backend.identity))  # durable before anything else
                    t = tally.add(c)
                    with log_lock:
                        log.write(run=run_id, sample_id=j.question.sample_id, split=j.split, index=j.index, key=j.key,
                                  prompt_tokens=c.prompt_tokens, completion_tokens=c.completion_tokens,
                                  attempts=c.attempts, latency_s=c.latency_s, finish_reason=c.finish_reason,
                                  total_prompt_tokens=t["prompt_tokens"], total_completion_tokens=t["completion_tokens"],
                                  cost_usd=t["cost_usd"])
                        cost = f", ${t['cost_usd']:.4f}" if t["cost_usd"] is not None else ""
                        advance(1, f"{t['prompt_tokens']}+{t['completion_tokens']} tokens{cost}")

                try:
                    backend.run(pending, done, recipe.seed)
                except TeacherUnavailable as e:
                    raise TeacherUnavailable(f"{e}; the {tally.rows} replies of this run are saved in "
                                             f"{cache_path}: rerun the same command to resume") from None

        factual = "factual" if contrastive else None
        run_round("samples", [job(s, q, i, first, factual) for s, q in all_q for i in range(cfg.samples)])
        if contrastive is not None and contrastive.counterfactual:
            run_round("counterfactuals", [job(s, q, 0, first, "counterfactual") for s, q in all_q], cf_jobs)
        if cfg.rationales == "correct":
            for r in range(cfg.resample):
                need = [(s, q) for s, q in all_q if not any(
                    is_correct(extractor, cache.rows[j.key]["completion"], q.gold)
                    and (cfg.keep_truncated or not _truncated(cache.rows[j.key])) for j in jobs_by_q[q.sample_id])]
                if not need:
                    break
                run_round(f"resample {r + 1}", [job(s, q, cfg.samples + r, again) for s, q in need])

        # every reply of every question, looked up by key (never by position)
        for _, q in all_q:
            q.replies = {j.index: cache.rows[j.key]["completion"] for j in jobs_by_q[q.sample_id]}
            q.truncated = {j.index for j in jobs_by_q[q.sample_id] if _truncated(cache.rows[j.key])}
        cf_replies = {sid: cache.rows[js[0].key]["completion"] for sid, js in cf_jobs.items()}
        totals = _totals(cfg, cache.rows, [j.key for by_q in (jobs_by_q, cf_jobs) for js in by_q.values() for j in js])

    splits = _write_splits(out_dir, cfg, questions, extractor, cf_replies, wrong)
    summary = {
        "recipe": recipe.name,
        "run": run_id,
        "teacher": {**backend.identity, **backend.info, "prompt": cfg.prompt, "system": cfg.system,
                    "few_shot": len(shots), "samples": cfg.samples, "sampling": first.as_dict(),
                    "resample": cfg.resample if cfg.rationales == "correct" else 0,
                    "resample_sampling": again.as_dict(), "rationales": cfg.rationales,
                    "extractor": recipe.eval.extractor.name,
                    # a' = perturb_answer(gold, seed, sample_id, choices): the seed is the recipe's
                    **({"contrastive": {**contrastive.model_dump(), "perturbed_answer_seed": recipe.seed}}
                       if contrastive else {})},
        "source": {"name": recipe.data.source.name, "report": source_report},
        "cache": {**opened, "rows_after": _count_lines(cache_path)},
        "rounds": rounds,
        "requests": backend.client.stats.as_dict() if isinstance(backend, _ApiBackend) else None,
        "this_run": tally.as_dict(),
        "all_replies": totals,
        "splits": splits,
        "wall_seconds": round(time.perf_counter() - wall, 3),
    }
    write_json(out_dir / "teach_summary.json", summary)
    return summary


def _write_splits(
    out_dir: Path, cfg: TeacherConfig, questions: dict[str, list[Question]], extractor: Any,
    cf_replies: dict[str, str], wrong: dict[str, str],
) -> dict[str, Any]:
    """``<split>.json`` (the kept rationales) and, with counterfactual replies,
    ``<split>_counterfactual.json`` per split; their counts for the summary."""
    splits: dict[str, Any] = {}
    for split, qs in questions.items():
        kept, counts = filter_questions(qs, cfg.rationales, extractor, cfg.keep_truncated)
        path = out_dir / f"{split}.json"
        rows = [{"id": q.sample_id, "instruction": q.question, "output": texts, "label": q.gold} for q, texts in kept]
        atomic_write_text(path, json.dumps(rows, indent=1, ensure_ascii=False) + "\n")
        counts["resampled_questions"] = sum(1 for q in qs if len(q.replies) > cfg.samples)
        splits[split] = {"file": str(path), **counts}
        if cf_replies:
            cf_rows, cf_counts = counterfactual_rows(qs, cf_replies, wrong)
            cf_path = out_dir / f"{split}_counterfactual.json"
            atomic_write_text(cf_path, json.dumps(cf_rows, indent=1, ensure_ascii=False) + "\n")
            splits[split]["counterfactual"] = {"file": str(cf_path), **cf_counts}
    return splits


def _requests(
    cfg: TeacherConfig, backend: _Backend, shots: list[FewShotExample], questions: list[Question],
    wrong: dict[str, str],
) -> dict[tuple[str | None, str], tuple[Any, str | None]]:
    """(role, sample_id) → (request, the answer its prompt states): one plain request per question
    (role None), or with ``teacher.hf.contrastive`` a factual and a counterfactual one."""
    contrastive = cfg.hf.contrastive if cfg.backend == "hf" else None
    out: dict[tuple[str | None, str], tuple[Any, str | None]] = {}
    for q in questions:
        if contrastive is None:
            out[None, q.sample_id] = (backend.request(build_messages(cfg, shots, q.question)), None)
            continue
        for role in ROLES:
            shown, other = answers(role, q.gold, wrong[q.sample_id], contrastive)
            msgs = lambda a, q=q: build_messages(cfg, shots, q.question, a)  # noqa: E731
            out[role, q.sample_id] = (contrastive_request(backend.request, msgs, shown, other, contrastive), shown)
    return out


def _row(j: Job, c: Completion, identity: dict[str, Any]) -> dict[str, Any]:
    contrastive = {} if j.role is None else {"role": j.role, "answer": j.answer}  # plain rows stay as they were
    return {
        "key": j.key, "sample_id": j.question.sample_id, "split": j.split, "index": j.index,
        "question": j.question.question, "gold": j.question.gold, **identity, **contrastive,
        "sampling": j.sampling.as_dict(), "completion": c.text, "finish_reason": c.finish_reason,
        "prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens, "attempts": c.attempts,
        "latency_s": c.latency_s, "time": round(time.time(), 3),
    }


def _totals(cfg: TeacherConfig, rows: dict[str, dict[str, Any]], keys: list[str]) -> dict[str, Any]:
    """Tokens and cost of every reply the data set uses (this run's and cached ones)."""
    used = [rows[k] for k in dict.fromkeys(keys)]
    p = sum(r.get("prompt_tokens") or 0 for r in used)
    c = sum(r.get("completion_tokens") or 0 for r in used)
    return {"rows": len(used), "prompt_tokens": p, "completion_tokens": c,
            "truncated": sum(1 for r in used if _truncated(r)),
            "cost_usd": estimate_cost(cfg, p, c)}


def _truncated(row: dict[str, Any]) -> bool:
    """A reply the teacher cut at max_tokens: its rationale (and answer) may be incomplete."""
    return row.get("finish_reason") == "length"


def _count_lines(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(1 for _ in f)

