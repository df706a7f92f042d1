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

:func:`teach` runs four phases, each a function with typed inputs and outputs: :func:`prepare`
(questions, prompts, backend → :class:`TeachPlan`), :func:`generate` (the rounds of requests
against the reply cache → :class:`Generated`), :func:`collect_replies` (every question's replies,
by cache key) and :func:`write_splits` (the filtered data set); then the summary.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kpod import registry
from kpod.data.records import DataError, Record
from kpod.progress import Reporter
from kpod.recipe import RecipeError, build_component, dump_recipe
from kpod.runs import MetricsWriter, atomic_write_text, write_json
from kpod.teach.backends import Backend, Job, make_backend
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
from kpod.teacher_config import ContrastiveConfig, FewShotExample, TeacherConfig

Requests = dict[tuple[str | None, str], tuple[Any, str | None]]  # (role, sample_id) → (request, answer shown)


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
# the run, phase by phase
# --------------------------------------------------------------------------------------
def teach(recipe: Any, out_dir: Path, *, limit: int | None = None, quiet: bool = False) -> dict[str, Any]:
    """Generate (or reuse) teacher rationales for the recipe's questions; write the filtered data
    set per split and ``teach_summary.json``; return the summary."""
    cfg: TeacherConfig | None = getattr(recipe, "teacher", None)
    if cfg is None:
        raise RecipeError("teacher: the recipe has no teacher section (see docs/teacher.md)")
    wall = time.perf_counter()
    reporter = Reporter(quiet)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "teach.resolved.yaml", dump_recipe(recipe))
    plan = prepare(recipe, cfg, limit if limit is not None else cfg.limit, reporter)
    cache_path = Path(cfg.cache) if cfg.cache else out_dir / "teacher_cache.jsonl"
    with TeacherCache(cache_path) as cache:
        opened = _report_opened(cache, cache_path, reporter)
        generated = generate(plan, Generation(plan, cache, cache_path, out_dir, reporter))
        cf_replies, totals = collect_replies(plan, cache, generated)
    splits = write_splits(out_dir, cfg, plan.questions, plan.extractor, cf_replies, plan.wrong)
    summary = {
        "recipe": recipe.name,
        "run": generated.run_id,
        "teacher": _teacher_summary(recipe, plan),
        "source": {"name": recipe.data.source.name, "report": plan.source_report},
        "cache": {**opened, "rows_after": _count_lines(cache_path)},
        "rounds": generated.rounds,
        "requests": plan.backend.request_stats(),
        "this_run": generated.tally.as_dict(),
        "all_replies": totals,
        "splits": splits,
        "wall_seconds": round(time.perf_counter() - wall, 3),
    }
    write_json(out_dir / "teach_summary.json", summary)
    return summary


@dataclass
class TeachPlan:
    """What a run asks the teacher: the questions per split, the request of each (role, question),
    the backend and the two samplings (first samples, resamples)."""

    cfg: TeacherConfig
    seed: int
    questions: dict[str, list[Question]]
    source_report: dict[str, Any]
    shots: list[FewShotExample]
    extractor: Any
    backend: Backend
    contrastive: ContrastiveConfig | None
    wrong: dict[str, str]  # sample_id → the perturbed answer (contrastive decoding only)
    requests: Requests
    first: Sampling
    again: Sampling

    @property
    def all_questions(self) -> list[tuple[str, Question]]:
        return [(s, q) for s, qs in self.questions.items() for q in qs]

    def job(self, split: str, q: Question, index: int, sampling: Sampling, role: str | None = None) -> Job:
        req, shown = self.requests[role, q.sample_id]
        return Job(cache_key(req, self.backend.identity, sampling, index), split, q, index, req, sampling, role, shown)


def prepare(recipe: Any, cfg: TeacherConfig, limit: int | None, reporter: Reporter) -> TeachPlan:
    """Phase 1: the questions, the few-shot examples, the backend and every request."""
    questions, source_report = load_questions(recipe, cfg, limit)
    shots = load_few_shot(cfg)
    extractor = build_component(registry.ANSWER_EXTRACTORS, recipe.eval.extractor)
    backend = make_backend(cfg, reporter)
    contrastive = cfg.hf.contrastive if cfg.backend == "hf" else None
    all_q = [q for qs in questions.values() for q in qs]
    wrong = {q.sample_id: perturbed_answer(q, contrastive, recipe.seed) for q in all_q} if contrastive else {}
    return TeachPlan(
        cfg, recipe.seed, questions, source_report, shots, extractor, backend, contrastive, wrong,
        _requests(cfg, backend, shots, all_q, wrong),
        first=Sampling(cfg.temperature, cfg.top_p, cfg.max_tokens),
        again=Sampling(cfg.resample_temperature, cfg.top_p, cfg.max_tokens),
    )


def _report_opened(cache: TeacherCache, path: Path, reporter: Reporter) -> dict[str, Any]:
    """What opening the cache found (a torn last line is repaired or cut, and said)."""
    opened = cache.report.as_dict()
    if opened["torn_tail_truncated_bytes"] or opened["torn_tail_repaired"]:
        what = ("repaired (newline added)" if opened["torn_tail_repaired"]
                else f"truncated ({opened['torn_tail_truncated_bytes']} bytes; that reply is requested again)")
        reporter.warn(f"{path}: the last line was torn by an interrupted run: {what}")
    reporter.info(f"teacher cache {path}: {len(cache.rows)} replies")
    return opened


@dataclass
class Generated:
    """The rounds of a run: every job per question (rationales; counterfactual decodes apart),
    what each round sent, and this run's tokens and cost."""

    run_id: str
    tally: Tally
    rounds: list[dict[str, Any]] = field(default_factory=list)
    jobs_by_q: dict[str, list[Job]] = field(default_factory=dict)
    cf_jobs: dict[str, list[Job]] = field(default_factory=dict)


class Generation:
    """Sends a round's uncached jobs to the backend; each reply is appended to the cache before
    anything else, then logged with the running totals."""

    def __init__(self, plan: TeachPlan, cache: TeacherCache, cache_path: Path, out_dir: Path, reporter: Reporter) -> None:
        self.plan, self.cache, self.cache_path, self.reporter = plan, cache, cache_path, reporter
        self.log = MetricsWriter(out_dir / "teach_log.jsonl")
        self.log_lock = threading.Lock()
        run_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"  # tells this run's log lines apart
        self.result = Generated(run_id, Tally(plan.cfg))

    def round(self, name: str, jobs: list[Job], counterfactual: bool = False) -> None:
        by_q = self.result.cf_jobs if counterfactual else self.result.jobs_by_q
        for j in jobs:
            by_q.setdefault(j.question.sample_id, []).append(j)
        pending = list({j.key: j for j in jobs if j.key not in self.cache}.values())
        self.result.rounds.append({"round": name, "jobs": len(jobs), "cached": len(jobs) - len(pending),
                                   "generated": len(pending)})
        if not pending:
            return
        with self.reporter.task(f"teach {name}", total=len(pending)) as advance:
            try:
                self.plan.backend.run(pending, lambda j, c: self._done(j, c, advance), self.plan.seed)
            except TeacherUnavailable as e:
                raise TeacherUnavailable(f"{e}; the {self.result.tally.rows} replies of this run are saved in "
                                         f"{self.cache_path}: rerun the same command to resume") from None

    def _done(self, j: Job, c: Completion, advance: Callable[[int, str], None]) -> None:
        self.cache.append(_row(j, c, self.plan.backend.identity))  # durable before anything else
        t = self.result.tally.add(c)
        with self.log_lock:
            self.log.write(run=self.result.run_id, sample_id=j.question.sample_id, split=j.split, index=j.index,
                           key=j.key, prompt_tokens=c.prompt_tokens, completion_tokens=c.completion_tokens,
                           attempts=c.attempts, latency_s=c.latency_s, finish_reason=c.finish_reason,
                           total_prompt_tokens=t["prompt_tokens"], total_completion_tokens=t["completion_tokens"],
                           cost_usd=t["cost_usd"])
            cost = f", ${t['cost_usd']:.4f}" if t["cost_usd"] is not None else ""
            advance(1, f"{t['prompt_tokens']}+{t['completion_tokens']} tokens{cost}")


def generate(plan: TeachPlan, gen: Generation) -> Generated:
    """Phase 2: ``teacher.samples`` samples per question (and the counterfactual decodes), then,
    with ``rationales: correct``, up to ``resample`` rounds for the questions still without a
    correct reply: each round decided from the cache alone, so a resumed run decides the same."""
    cfg, all_q = plan.cfg, plan.all_questions
    factual = "factual" if plan.contrastive else None
    gen.round("samples", [plan.job(s, q, i, plan.first, factual) for s, q in all_q for i in range(cfg.samples)])
    if plan.contrastive is not None and plan.contrastive.counterfactual:
        gen.round("counterfactuals", [plan.job(s, q, 0, plan.first, "counterfactual") for s, q in all_q], True)
    if cfg.rationales == "correct":
        jobs_by_q, rows = gen.result.jobs_by_q, gen.cache.rows
        for r in range(cfg.resample):
            need = [(s, q) for s, q in all_q if not any(
                is_correct(plan.extractor, rows[j.key]["completion"], q.gold)
                and (cfg.keep_truncated or not _truncated(rows[j.key])) for j in jobs_by_q[q.sample_id])]
            if not need:
                break
            gen.round(f"resample {r + 1}", [plan.job(s, q, cfg.samples + r, plan.again) for s, q in need])
    return gen.result


def collect_replies(plan: TeachPlan, cache: TeacherCache, generated: Generated) -> tuple[dict[str, str], dict[str, Any]]:
    """Phase 3: every reply of every question, looked up by key (never by position), onto its
    :class:`Question`; returns the counterfactual replies by sample_id and the tokens and cost of
    every reply the data set uses."""
    for _, q in plan.all_questions:
        jobs = generated.jobs_by_q[q.sample_id]
        q.replies = {j.index: cache.rows[j.key]["completion"] for j in jobs}
        q.truncated = {j.index for j in jobs if _truncated(cache.rows[j.key])}
    cf_replies = {sid: cache.rows[js[0].key]["completion"] for sid, js in generated.cf_jobs.items()}
    keys = [j.key for by_q in (generated.jobs_by_q, generated.cf_jobs) for js in by_q.values() for j in js]
    return cf_replies, _totals(plan.cfg, cache.rows, keys)


def _teacher_summary(recipe: Any, plan: TeachPlan) -> dict[str, Any]:
    cfg, contrastive = plan.cfg, plan.contrastive
    return {**plan.backend.identity, **plan.backend.info, "prompt": cfg.prompt, "system": cfg.system,
            "few_shot": len(plan.shots), "samples": cfg.samples, "sampling": plan.first.as_dict(),
            "resample": cfg.resample if cfg.rationales == "correct" else 0,
            "resample_sampling": plan.again.as_dict(), "rationales": cfg.rationales,
            "extractor": recipe.eval.extractor.name,
            # a' = perturb_answer(gold, seed, sample_id, choices): the seed is the recipe's
            **({"contrastive": {**contrastive.model_dump(), "perturbed_answer_seed": recipe.seed}}
               if contrastive else {})}


def write_splits(
    out_dir: Path, cfg: TeacherConfig, questions: dict[str, list[Question]], extractor: Any,
    cf_replies: dict[str, str], wrong: dict[str, str],
) -> dict[str, Any]:
    """Phase 4: ``<split>.json`` (the kept rationales) and, with counterfactual replies,
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
    cfg: TeacherConfig, backend: Backend, shots: list[FewShotExample], questions: list[Question],
    wrong: dict[str, str],
) -> Requests:
    """(role, sample_id) → (request, the answer its prompt states): one plain request per question
    (role None), or with ``teacher.hf.contrastive`` a factual and a counterfactual one."""
    contrastive = cfg.hf.contrastive if cfg.backend == "hf" else None
    out: Requests = {}
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

