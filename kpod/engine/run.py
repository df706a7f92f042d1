"""``kpod run``: recipe → data → student → weights → plan → training → evaluation → summary."""

from __future__ import annotations

import gc
import inspect
import json
import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import kpod
from kpod import registry
from kpod.data.collate import StageCollator
from kpod.data.records import BadRowError, BadRows, DataError, Record
from kpod.data.template import PromptTemplate
from kpod.data.tokenize import Encoded, encode_causal_many
from kpod.engine.progress import Reporter
from kpod.engine.student import Student, StudentError, apply_lora, load_student, save_student
from kpod.engine.train import Trainer
from kpod.eval.generate import evaluate_split
from kpod.recipe import RecipeError, build_component, dump_recipe
from kpod.runs import (
    MetricsWriter,
    PhaseTimer,
    atomic_save_dir,
    atomic_write_text,
    last_checkpoint,
    peak_memory,
    prepare_resume,
    prepare_run_dir,
    write_json,
    write_jsonl,
    writing,
)
from kpod.schedulers.base import CurriculumPlan, ScheduleInputs
from kpod.tracking import start_tracking
from kpod.weighting.base import WeightingContext
from kpod.weighting.evaluate import keypoint_auc


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def template_from(recipe: Any) -> PromptTemplate:
    t = recipe.data.template
    return PromptTemplate(
        question_prefix=t.question_prefix,
        answer_prefix=t.answer_prefix,
        trigger=t.trigger,
        answer_sentence=t.answer_sentence,
        use_rationale=t.use_rationale,
    )


def load_data(
    recipe: Any, report: dict[str, Any] | None = None, *, training: bool = False, require_train: bool = True
) -> dict[str, list[Record]]:
    """The recipe's data source, loaded; ``report`` (if given) receives the source's counts and
    ``bad_rows`` (every row skipped under ``data.on_bad_row: skip``, with file:line and reason).

    Row checks beyond the source's own: the gold answer must be readable by ``eval.extractor``
    (extractors with a ``check_gold`` method), and with ``training`` every train record needs a
    rationale unless ``data.template.use_rationale`` is false.
    """
    faults = BadRows(recipe.data.on_bad_row)
    source = build_component(registry.DATA_SOURCES, recipe.data.source)
    if "faults" in inspect.signature(source.load).parameters:
        splits: dict[str, list[Record]] = source.load(recipe.data.step_splitter.mode, faults=faults)
    elif faults.policy == "skip":
        raise RecipeError(
            f"data.on_bad_row: the {recipe.data.source.name!r} source cannot skip rows (its load() takes no "
            "'faults' argument); use data.on_bad_row: error"
        )
    else:
        splits = source.load(recipe.data.step_splitter.mode)
    extractor = build_component(registry.ANSWER_EXTRACTORS, recipe.eval.extractor)
    check_gold = getattr(extractor, "check_gold", None)  # optional for plugin extractors
    need_rationale = training and recipe.data.template.use_rationale
    for split, recs in splits.items():
        kept = []
        for r in recs:
            where = r.meta.get("where") or f"sample {r.sample_id}"
            problem = check_gold(r.answer) if check_gold is not None else None
            if problem is not None:
                faults.handle(BadRowError(where, "bad_answer", problem))
            elif need_rationale and split == "train" and not r.steps:
                faults.handle(BadRowError(
                    where, "empty_rationale",
                    "empty rationale in the training split (CoT training needs one; set "
                    "data.template.use_rationale: false for answer-only training)",
                ))
            else:
                kept.append(r)
        splits[split] = kept
    if report is not None:
        report.update(getattr(source, "report", {}) or {})
        report["bad_rows"] = faults.report()
    if require_train and not splits.get("train"):  # `kpod eval` reads evaluation files alone
        raise DataError(f"data.source ({recipe.data.source.name}): no 'train' split, or it is empty")
    seen: dict[str, Record] = {}
    split_of: dict[str, str] = {}
    for split, recs in splits.items():
        for r in recs:
            if r.sample_id in seen:
                a, b = seen[r.sample_id].meta.get("where"), r.meta.get("where")
                rows = f" ({a} and {b})" if a and b else ""
                raise DataError(
                    f"sample_id {r.sample_id!r} appears in both {split_of[r.sample_id]!r} and {split!r}{rows}"
                )
            seen[r.sample_id], split_of[r.sample_id] = r, split
    return splits


def resolve_precision(precision: str, student: Student) -> str:
    if precision == "fp16" and student.is_encoder_decoder:
        raise StudentError(
            "train.precision: fp16 overflows T5-family (encoder-decoder) students; use bf16 or fp32"
        )
    if precision != "auto":
        return precision
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


def make_accelerator(precision: str) -> Any:
    from accelerate import Accelerator

    mixed = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[precision]
    return Accelerator(mixed_precision=mixed)


def weighting_phase(
    recipe: Any,
    train: list[Record],
    student: Student,
    template: PromptTemplate,
    device: Any,
    reporter: Reporter,
    metrics: MetricsWriter | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Fit (or load from cache) the recipe's weighting strategy; weights by sample_id + report."""
    weighting = build_component(registry.WEIGHTING, recipe.weighting)
    ctx = WeightingContext(
        records=train,
        seed=recipe.seed,
        extras={"student": student, "template": template, "device": device, "reporter": reporter, "metrics": metrics},
    )
    weights = weighting.compute(ctx)
    report = dict(getattr(weighting, "report", {}) or {})
    keypoints = keypoint_auc(train, weights, template, student.tokenizer)
    if keypoints is not None:
        report["keypoint_auc"] = keypoints
    if report.get("cache_hit"):
        reporter.info(f"weights: cache hit ({report.get('cache_path', '')})")
    return weights, report


def plan_phase(
    recipe: Any,
    train: list[Record],
    student: Student,
    template: PromptTemplate,
    weights: Any,
    device: Any,
    reporter: Reporter,
    scheduler: Any = None,
) -> tuple[CurriculumPlan, dict[str, Any]]:
    """Difficulties and clusters if the scheduler needs them, then the curriculum plan
    (``scheduler``: the recipe's, already built; the Trainer needs the same one if it is adaptive)."""
    from kpod.clusters import question_clusters
    from kpod.difficulty import compute_difficulties
    from kpod.weighting.cache import cache_root

    if scheduler is None:
        scheduler = build_component(registry.SCHEDULERS, recipe.scheduler)
    needs = set(getattr(scheduler, "needs", ()))
    report: dict[str, Any] = {}
    difficulties = clusters = None
    if "difficulty" in needs:
        if recipe.student.model.startswith("tiny:") and recipe.student.pretrain is None:
            reporter.warn(
                "step difficulty comes from a randomly initialised student: difficulties are near "
                "log|V| and the plan is mostly cluster-balanced (spec §10(g))"
            )
        difficulties = compute_difficulties(
            student.model, student.tokenizer, student.is_encoder_decoder, train, template, weights,
            mode=recipe.difficulty.within_step, batch_size=recipe.difficulty.batch_size, device=device,
            cache_dir=cache_root(),
        )
        for r in train:  # questions without a rationale have no steps to schedule
            difficulties.setdefault(r.sample_id, [])
        flat = [d for v in difficulties.values() for d in v]
        q = np.percentile(flat, [0, 10, 50, 90, 100]) if flat else [0.0] * 5
        report["difficulty"] = {
            "within_step": recipe.difficulty.within_step,
            "total_B": round(float(sum(flat)), 4),
            "mean": round(float(np.mean(flat)), 4),
            "std": round(float(np.std(flat)), 4),
            # the spread says whether "easy to hard" carries a signal (a random student: all ≈ log|V|)
            "min_p10_median_p90_max": [round(float(x), 4) for x in q],
            "log_vocab": round(float(np.log(len(student.tokenizer))), 4),
        }
    if "clusters" in needs:
        clusters, report["clusters"] = question_clusters(
            train, recipe.clusters, recipe.seed, student.model, student.tokenizer
        )
    if difficulties is not None:  # step difficulties (nats) for `kpod report`'s histogram
        counts, edges = np.histogram([d for v in difficulties.values() for d in v] or [0.0], bins=20)
        report["difficulty"]["histogram"] = {"counts": counts.astype(int).tolist(),
                                             "edges": [round(float(e), 4) for e in edges]}
    inputs = ScheduleInputs(
        n_steps={r.sample_id: r.n_steps for r in train},
        num_epochs=recipe.train.epochs,
        seed=recipe.seed,
        difficulties=difficulties,
        clusters=clusters,
    )
    plan: CurriculumPlan = scheduler.plan(inputs)
    stages = plan.info.get("stages") if isinstance(plan.info, dict) else None
    if stages:  # per-stage selection statistics (spec §5): the plan.json has them too
        keys = ("stage", "epoch", "selected", "candidates", "delta_D", "delta_H", "F", "G", "target_D", "achieved_H")
        report["stages"] = [{k: st[k] for k in keys if k in st} for st in stages]
    return plan, report


def _check_resume(run_dir: Path, resolved: str) -> None:
    path = run_dir / "recipe.resolved.yaml"
    if path.exists() and path.read_text(encoding="utf-8") != resolved:
        import difflib

        diff = "".join(
            list(difflib.unified_diff(path.read_text().splitlines(True), resolved.splitlines(True), "saved", "now", n=0))[:20]
        )
        raise RecipeError(f"--resume: the recipe differs from the one this run started with:\n{diff}")


def run_recipe(
    recipe: Any,
    out_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    quiet: bool = False,
) -> dict[str, Any]:
    """Run one recipe end to end; returns the summary (also written to ``summary.json``)."""
    timer = PhaseTimer()
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    from accelerate import PartialState

    # one process, or one rank of `accelerate launch` / torchrun (CPU ranks: DDP over gloo)
    use_cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true") or not torch.cuda.is_available()
    procs = PartialState(cpu=use_cpu)
    if procs.is_main_process:
        run_dir = prepare_run_dir(Path(out_dir), resume=resume, overwrite=overwrite)
    procs.wait_for_everyone()
    run_dir = Path(out_dir)
    resolved = dump_recipe(recipe)
    if resume:
        _check_resume(run_dir, resolved)
        if procs.is_main_process:  # what a crash or kill -9 left half-written goes first
            prepare_resume(run_dir)
        procs.wait_for_everyone()
    if recipe.train.threads:
        torch.set_num_threads(recipe.train.threads)
    seed_everything(recipe.seed)
    reporter = Reporter(quiet=quiet or not procs.is_main_process)

    t0 = time.perf_counter()
    data_report: dict[str, Any] = {}
    splits = load_data(recipe, data_report, training=True)
    if data_report["bad_rows"]["count"]:
        bad = data_report["bad_rows"]
        reporter.warn(f"data.on_bad_row: skipped {bad['count']} bad rows "
                      f"({', '.join(f'{k} {v}' for k, v in bad['by_reason'].items())}); listed in summary.json")
    template = template_from(recipe)
    train = splits["train"]
    train_sers = [template.serialize(r) for r in train]  # serialised once: tokenizer training and encoding
    train_texts = [s.text for s in train_sers]
    timer.add("data", time.perf_counter() - t0)

    t0 = time.perf_counter()
    tok_dir = run_dir / "tokenizer"
    if recipe.student.pretrain is not None:
        from kpod.engine.pretrain import base_path
        from kpod.weighting.cache import cache_root

        where = base_path(recipe.student, cache_root())
        if not (where / "base.json").exists():
            reporter.info(f"pre-training the tiny student's base once ({recipe.student.pretrain.steps} steps); "
                          f"cached at {where}")
    student = load_student(recipe.student, train_texts=train_texts, seed=recipe.seed)
    if recipe.student.model.startswith("tiny:"):
        if resume and tok_dir.exists():  # the exact tokenizer the checkpoint was trained with
            from transformers import PreTrainedTokenizerFast

            student.tokenizer = PreTrainedTokenizerFast.from_pretrained(str(tok_dir))
        elif procs.is_main_process:  # atomic: a kill must not leave a half-saved tokenizer
            atomic_save_dir(tok_dir, student.tokenizer.save_pretrained)
        _same_on_every_rank(procs, "the tiny student's tokenizer", sorted(student.tokenizer.get_vocab().items()))
    precision = resolve_precision(recipe.train.precision, student)
    accelerator = make_accelerator(precision)
    metrics = MetricsWriter(run_dir / "metrics.jsonl", enabled=accelerator.is_main_process)
    if accelerator.is_main_process:
        atomic_write_text(run_dir / "recipe.resolved.yaml", resolved)
        metrics.listener = start_tracking(recipe, run_dir, resolved)  # None without `track:`
    n_params = sum(p.numel() for p in student.model.parameters())
    reporter.info(
        f"[bold]{recipe.name}[/]: student {student.source} ({n_params / 1e6:.2f}M params, "
        f"{'seq2seq' if student.is_encoder_decoder else 'causal'}), {len(train)} training examples, "
        f"precision {precision}, device {accelerator.device}"
    )
    max_length = _max_length(recipe, student)
    # before any phase runs the model on them: a multi-MB row must not reach weighting or difficulty
    # causal students: one tokenisation of the training set, for the length check and the collator
    encoded = None
    if not student.is_encoder_decoder:
        encoded = dict(zip((r.sample_id for r in train), encode_causal_many(student.tokenizer, train_sers)))
    train = _drop_too_long(recipe, train, template, student, max_length, data_report, reporter, encoded)
    timer.add("student", time.perf_counter() - t0)  # student, tokenizer and the tokenised training set

    # ---- weighting
    t0 = time.perf_counter()
    weights, weighting_report = weighting_phase(recipe, train, student, template, accelerator.device, reporter, metrics)
    weights, weighting_report = _from_main(procs, (weights, weighting_report))
    if accelerator.is_main_process:  # a few samples' token weights for `kpod report`'s heatmap
        write_weight_sample(run_dir, train, weights, template, student.tokenizer)
    timer.add("weighting", time.perf_counter() - t0)

    # ---- plan
    t0 = time.perf_counter()
    scheduler = build_component(registry.SCHEDULERS, recipe.scheduler)
    plan, plan_report = plan_phase(recipe, train, student, template, weights, accelerator.device, reporter, scheduler)
    plan, plan_report = _from_main(procs, (plan, plan_report))
    if accelerator.is_main_process:
        write_json(run_dir / "plan.json", plan.to_json())
        if metrics.listener is not None:
            metrics.listener.set_curriculum(plan.to_json())
    timer.add("plan", time.perf_counter() - t0)

    # ---- train
    t0 = time.perf_counter()
    collator = StageCollator(
        train, template, student.tokenizer, student.is_encoder_decoder, weights, max_length, encoded=encoded
    )
    loss_fn = build_component(registry.LOSSES, recipe.loss)
    if recipe.student.lora is not None:  # after weights and difficulty: spec §10(g) wants no adapters there
        student = _with_lora(student, recipe, run_dir, procs)
    student.model.to(accelerator.device)
    trainer = Trainer(
        model=student.model,
        is_encoder_decoder=student.is_encoder_decoder,
        collator=collator,
        loss_fn=loss_fn,
        plan=plan,
        scheduler=scheduler,
        train_ids=[r.sample_id for r in train],
        cfg=recipe.train,
        seed=recipe.seed,
        run_dir=run_dir,
        accelerator=accelerator,
        metrics=metrics,
    )
    extractor = build_component(registry.ANSWER_EXTRACTORS, recipe.eval.extractor)
    evaluator = _SplitEvaluator(recipe, splits, template, student, extractor, max_length, data_report,
                                reporter, procs, accelerator.device)
    selection_log: list[dict[str, Any]] = []
    if recipe.eval.select_on is not None:
        select_split = recipe.eval.select_on

        def select(step: int) -> float:
            """Accuracy on the selection split (every rank calls this; each generates its share)."""
            res, _ = evaluator(accelerator.unwrap_model(trainer.model), select_split,
                               limit=recipe.eval.select_limit)
            metrics.write(phase="eval", split=select_split, step=step, during_training=True, **res)
            selection_log.append({"step": step, "accuracy": res["accuracy"]})
            return float(res["accuracy"])

        trainer.select = select
        trainer.select_every_steps = recipe.eval.select_every_steps
    ckpt = last_checkpoint(run_dir) if resume else None
    if ckpt is not None:
        trainer.load_checkpoint(ckpt)
        reporter.info(f"resumed from {ckpt.name} (epoch {trainer.state.epoch}, step {trainer.state.global_step})")
    elif resume:
        reporter.info("--resume: no complete checkpoint yet; training starts from step 0")
    reporter.info(f"packing {trainer.packing_reason}; chunked loss {trainer.loss_chunk_reason}")
    with reporter.task("train", total=trainer.total_steps, completed=trainer.state.global_step) as advance:
        trainer.on_step = lambda step, epoch, s: advance(1, f"epoch {epoch} loss {s['loss']:.3f}")
        state = trainer.train()
    selection = None
    if recipe.eval.select_on is not None:
        selected = trainer.load_selected()
        selection = {
            "split": recipe.eval.select_on, "metric": "accuracy", "step": selected,
            "score": state.best_score, "last_step": state.global_step,
            "evaluations": _selection_history(run_dir / "metrics.jsonl", recipe.eval.select_on) or selection_log,
        }
        if selected is None:  # no optimizer step ran (train.epochs: 0): the model as loaded
            reporter.info("no training step ran: nothing to select, the model as loaded is reported")
        else:
            reporter.info(f"selected step {selected} of {state.global_step} "
                          f"({recipe.eval.select_on} accuracy {state.best_score:.3f})")
    timer.add("train", time.perf_counter() - t0)
    model = accelerator.unwrap_model(trainer.model)
    full_state = accelerator.get_state_dict(trainer.model)  # gathers FSDP shards; every rank calls it
    if accelerator.is_main_process:
        with writing(run_dir / "model"):
            save_student(Student(model, student.tokenizer, student.is_encoder_decoder, student.source),
                         str(run_dir / "model"), state_dict=full_state)

    # ---- evaluate (the selected model when eval.select_on is set)
    t0 = time.perf_counter()
    results: dict[str, Any] = {}
    predictions: list[dict[str, Any]] = []
    missing_splits = [s for s in recipe.eval.splits if s not in splits]
    for split in recipe.eval.splits:
        if split not in splits:
            reporter.warn(f"eval.splits: split {split!r} is not in the data (have: {', '.join(splits)})")
            continue
        res, preds = evaluator(model, split, limit=recipe.eval.limit, progress=True)
        results[split] = res
        predictions.extend(preds)
        metrics.write(phase="eval", split=split, step=state.global_step,
                      model_step=selection["step"] if selection else state.global_step, **res)
        reporter.info(f"{split}: accuracy {res['accuracy']:.3f} ({res['correct']}/{res['count']})")
    timer.add("eval", time.perf_counter() - t0)

    summary = {
        "kpod_version": kpod.__version__,
        "recipe": recipe.name,
        "seed": recipe.seed,
        "student": {"model": student.source, "params": n_params, "encoder_decoder": student.is_encoder_decoder},
        "precision": precision,
        "splits": results,
        "missing_splits": missing_splits,
        "data": {s: len(v) for s, v in splits.items()},
        "data_report": data_report,
        "selection": selection,
        "train": {
            "steps": state.global_step,
            "epochs": recipe.train.epochs,
            "final": _last_train_metrics(run_dir / "metrics.jsonl"),
            "packing": trainer.packing_reason,
            "loss_chunk": trainer.loss_chunk_reason,
        },
        "weighting": {"name": recipe.weighting.name, **weighting_report},
        "scheduler": {"name": recipe.scheduler.name, **plan_report},
        "loss": recipe.loss.name,
        "wall_seconds": {"total": timer.total(), "phases": timer.phases},
        "memory": peak_memory(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "finished": True,
    }
    if accelerator.is_main_process:
        write_jsonl(run_dir / "predictions.jsonl", predictions)
        write_json(run_dir / "summary.json", summary)
        if metrics.listener is not None:
            metrics.listener.log_final(results, state.global_step)
            metrics.listener.finish()
    if procs.num_processes > 1:  # leave together: a rank exiting mid-talk makes gloo/NCCL abort
        # the DDP wrapper's reducer holds the process group: free it first, so the group's
        # threads end in destroy_process_group, not during interpreter shutdown (an abort there)
        del trainer
        accelerator.free_memory()
        gc.collect()
        procs.wait_for_everyone()
        procs.destroy_process_group()
    return summary


class _SplitEvaluator:
    """Greedy generation + answer extraction on one split, shared by model selection during
    training and the final evaluation; under several processes each rank generates its share
    and every rank gets the gathered result."""

    def __init__(self, recipe: Any, splits: dict[str, list[Record]], template: PromptTemplate, student: Student,
                 extractor: Any, max_length: int, data_report: dict[str, Any], reporter: Reporter, procs: Any,
                 device: Any) -> None:
        self.recipe, self.splits, self.template, self.student = recipe, splits, template, student
        self.extractor, self.max_length, self.data_report = extractor, max_length, data_report
        self.reporter, self.procs, self.device = reporter, procs, device
        if recipe.eval.select_on is not None and recipe.eval.select_on not in splits:
            raise RecipeError(
                f"eval.select_on: split {recipe.eval.select_on!r} is not in the data (have: "
                f"{', '.join(splits)}); name another split, or set eval.select_on: null to report the final model"
            )

    def __call__(self, model: Any, split: str, *, limit: int | None = None,
                 progress: bool = False) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        recs = self.splits[split][:limit] if limit else self.splits[split]
        recs = _fit_eval(self.recipe, split, recs, self.template, self.student, self.max_length,
                         self.data_report, self.reporter)
        mine = recs[self.procs.process_index :: self.procs.num_processes]
        with self.reporter.task(f"eval {split}", total=len(mine), enabled=progress) as advance:
            res, preds = evaluate_split(
                model, self.student.tokenizer, mine, self.template, self.extractor, self.student.is_encoder_decoder,
                batch_size=self.recipe.eval.batch_size, max_new_tokens=self.recipe.eval.max_new_tokens,
                device=self.device, split=split, on_batch=lambda n: advance(n, ""),
                stop_at_answer=self.recipe.eval.stop_at_answer, backend=self.recipe.eval.backend,
            )
        if self.procs.num_processes > 1:
            res, preds = _gather_predictions(preds, recs)
        return res, preds


def _selection_history(path: Path, split: str) -> list[dict[str, Any]]:
    """Every selection evaluation in ``metrics.jsonl`` (a resumed run logged some before)."""
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [{"step": r["step"], "accuracy": r["accuracy"]} for r in rows
            if r.get("phase") == "eval" and r.get("during_training") and r.get("split") == split]


def _max_length(recipe: Any, student: Student) -> int:
    """``data.max_length``, capped at a causal student's position embeddings."""
    positions = getattr(student.model.config, "max_position_embeddings", None)
    if positions and not student.is_encoder_decoder:
        return min(recipe.data.max_length, int(positions))
    return int(recipe.data.max_length)


def _drop_too_long(
    recipe: Any, train: list[Record], template: PromptTemplate, student: Student, max_length: int,
    data_report: dict[str, Any], reporter: Reporter, encoded: dict[str, Encoded] | None = None,
) -> list[Record]:
    """``data.on_too_long`` for training examples, measured in the student's tokens (from
    ``encoded``, the causal encodings by sample_id, when the caller has them)."""
    from kpod.data.collate import token_lengths

    if encoded is not None:
        lengths = {r.sample_id: len(encoded[r.sample_id].input_ids) for r in train}
    else:
        lengths = token_lengths(train, template, student.tokenizer, student.is_encoder_decoder)
    long = [r for r in train if lengths[r.sample_id] > max_length]
    if not long:
        return train
    where = [r.meta.get("where") or r.sample_id for r in long]
    if recipe.data.on_too_long == "error":
        r = long[0]
        raise DataError(
            f"{where[0]}: sample {r.sample_id}: sequence of {lengths[r.sample_id]} tokens exceeds "
            f"max_length={max_length} ({len(long)} training examples do; raise data.max_length, or set "
            "data.on_too_long: skip)"
        )
    reporter.warn(f"data.on_too_long: skipped {len(long)} training examples longer than {max_length} tokens")
    data_report["skipped_too_long"] = {
        "count": len(long), "max_length": max_length, "sample_ids": [r.sample_id for r in long],
        "rows": [{"sample_id": r.sample_id, "where": w, "tokens": lengths[r.sample_id]} for r, w in zip(long, where)],
    }
    drop = {r.sample_id for r in long}
    return [r for r in train if r.sample_id not in drop]


def _fit_eval(
    recipe: Any, split: str, recs: list[Record], template: PromptTemplate, student: Student, max_length: int,
    data_report: dict[str, Any], reporter: Reporter,
) -> list[Record]:
    """``data.on_too_long`` for evaluation prompts (a prompt longer than max_length tokens)."""
    prompts = [template.inference_prefix(r.question) for r in recs]
    ids = student.tokenizer(prompts, add_special_tokens=False)["input_ids"] if prompts else []
    long = [(r, len(x) + 1) for r, x in zip(recs, ids) if len(x) + 1 > max_length]
    if not long:
        return recs
    r, n = long[0]
    where = r.meta.get("where") or r.sample_id
    if recipe.data.on_too_long == "error":
        raise DataError(
            f"{where}: sample {r.sample_id} ({split}): prompt of {n} tokens exceeds max_length={max_length} "
            f"({len(long)} {split} prompts do; raise data.max_length, or set data.on_too_long: skip)"
        )
    reporter.warn(f"data.on_too_long: {len(long)} {split} prompts longer than {max_length} tokens are not evaluated")
    data_report.setdefault("skipped_too_long_eval", {})[split] = {
        "count": len(long), "max_length": max_length,
        "rows": [{"sample_id": x.sample_id, "where": x.meta.get("where") or x.sample_id, "tokens": k} for x, k in long],
    }
    drop = {x.sample_id for x, _ in long}
    return [x for x in recs if x.sample_id not in drop]


def _with_lora(student: Student, recipe: Any, run_dir: Path, procs: Any) -> Student:
    """LoRA adapters on the student. A tiny student's random base is saved to ``RUN_DIR/base`` so
    the adapter in ``RUN_DIR/model`` can be reloaded (and merged) later."""
    base_dir = run_dir / "base"
    if recipe.student.model.startswith("tiny:") and procs.is_main_process:
        save_student(student, str(base_dir))
    wrapped = apply_lora(student, recipe.student.lora)
    if recipe.student.model.startswith("tiny:"):
        for cfg in wrapped.model.peft_config.values():
            cfg.base_model_name_or_path = str(base_dir.resolve())
    return wrapped


def _from_main(procs: Any, obj: Any) -> Any:
    """The main process's ``obj`` on every rank (weights and plan must be identical everywhere)."""
    if procs.num_processes == 1:
        return obj
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([obj], from_process=0)[0]


def _same_on_every_rank(procs: Any, what: str, obj: Any) -> None:
    if procs.num_processes == 1:
        return
    import hashlib

    from accelerate.utils import gather_object

    digests = gather_object([hashlib.sha256(repr(obj).encode()).hexdigest()])
    if len(set(digests)) != 1:
        raise RuntimeError(f"{what} differs between ranks; run `kpod run` once on one process to cache it")


def _gather_predictions(preds: list[dict[str, Any]], records: list[Record]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Every rank's predictions, in the split's order (by sample_id), and the split's accuracy."""
    from accelerate.utils import gather_object

    rows = gather_object(preds)
    index = {r.sample_id: i for i, r in enumerate(records)}
    rows.sort(key=lambda p: index[p["sample_id"]])
    if [p["sample_id"] for p in rows] != [r.sample_id for r in records]:
        raise RuntimeError("gathered predictions do not cover the split exactly once")
    correct = sum(p["correct"] for p in rows)
    return {"accuracy": correct / len(rows) if rows else 0.0, "count": len(rows), "correct": correct}, rows


def _last_train_metrics(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    last: dict[str, Any] = {}
    for line in path.read_text().splitlines():
        ev = json.loads(line)
        if ev.get("phase") == "train":
            last = ev
    return {k: last[k] for k in ("loss", "ce_rationale", "ce_answer") if k in last}


def default_out_dir(recipe: Any) -> Path:
    return Path(os.environ.get("KPOD_RUNS", "runs")) / f"{recipe.name}-seed{recipe.seed}"


def _offline_setup(recipe: Any, quiet: bool) -> tuple[Reporter, list[Record], PromptTemplate, Student, Any]:
    """The first phases of a run (data, template, student) for commands that do not train."""
    seed_everything(recipe.seed)
    splits = load_data(recipe, training=True)
    template = template_from(recipe)
    train = splits["train"]
    student = load_student(recipe.student, [template.serialize(r).text for r in train], seed=recipe.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    reporter = Reporter(quiet=quiet)
    train = _drop_too_long(recipe, train, template, student, _max_length(recipe, student), {}, reporter)
    return reporter, train, template, student, device


def export_weights(
    recipe: Any, out_file: Path, html_file: Path | None = None, html_limit: int = 50, quiet: bool = False
) -> dict[str, Any]:
    """``kpod weights``: the data, student and weighting phases of a run, then the export."""
    from kpod.weighting.export import render_html, token_rows
    from kpod.weighting.export import write_jsonl as write_rows

    reporter, train, template, student, device = _offline_setup(recipe, quiet)
    weights, report = weighting_phase(recipe, train, student, template, device, reporter)
    rows = token_rows(train, weights, template, student.tokenizer)
    write_rows(rows, Path(out_file))
    if html_file is not None:
        atomic_write_text(Path(html_file), render_html(rows, f"{recipe.name}: {recipe.weighting.name} weights", html_limit))
    return report


def write_weight_sample(
    run_dir: Path, train: list[Record], weights: Any, template: PromptTemplate, tokenizer: Any, n: int = 6
) -> None:
    """``weights_sample.jsonl``: tokens and weights of the first ``n`` training rationales."""
    from kpod.weighting.export import token_rows

    rows = token_rows([r for r in train if r.steps][:n], weights, template, tokenizer)
    write_jsonl(run_dir / "weights_sample.jsonl", rows)


def export_plan(recipe: Any, out_file: Path, plot_file: Path | None = None, quiet: bool = False) -> dict[str, Any]:
    """``kpod plan``: data, student, weights and the curriculum plan, written as JSON (+ plot)."""
    reporter, train, template, student, device = _offline_setup(recipe, quiet)
    weights, _ = weighting_phase(recipe, train, student, template, device, reporter)
    plan, report = plan_phase(recipe, train, student, template, weights, device, reporter)
    counts = []
    for stage in plan.stages:
        hist: dict[int, int] = {}
        for c in stage.values():
            hist[c] = hist.get(c, 0) + 1
        counts.append({str(k): v for k, v in sorted(hist.items())})
    doc = {
        "recipe": recipe.name,
        "scheduler": recipe.scheduler.name,
        "epochs": recipe.train.epochs,
        "report": report,
        "questions_per_c": counts,
        **plan.to_json(),
    }
    write_json(Path(out_file), doc)
    if plot_file is not None:
        plot_plan(doc, Path(plot_file))
    return doc


def plot_plan(doc: dict[str, Any], path: Path) -> None:
    """Target budget D(t) vs achieved difficulty H(t), and how many questions sit at each c."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RecipeError("--plot needs matplotlib: pip install 'kpod[plot]'") from None
    info = doc.get("info", {})
    per_stage = info.get("stages", [])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    if per_stage:
        t = list(range(len(per_stage)))
        axes[0].plot(t, [s["target_D"] for s in per_stage], label="target D(t)", marker="o", ms=3)
        axes[0].plot(t, [s["achieved_H"] for s in per_stage], label="achieved H(t)", marker="x", ms=3)
        axes[0].set_xlabel("stage t")
        axes[0].set_ylabel("total output difficulty (nats)")
        axes[0].legend()
    else:
        axes[0].text(0.5, 0.5, f"{doc['scheduler']}: no difficulty budget", ha="center", va="center")
    counts = doc["questions_per_c"]
    cs = sorted({int(c) for stage in counts for c in stage})
    bottom = [0] * len(counts)
    for c in cs:
        vals = [stage.get(str(c), 0) for stage in counts]
        axes[1].bar(range(len(counts)), vals, bottom=bottom, label=f"c={c}")
        bottom = [b + v for b, v in zip(bottom, vals)]
    axes[1].set_xlabel("stage t")
    axes[1].set_ylabel("questions")
    axes[1].set_title("given steps c per question")
    if cs:
        axes[1].legend(fontsize=7, ncol=2)
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(f"{doc['recipe']}: {doc['scheduler']} plan")
    fig.tight_layout()
    try:
        with writing(path):
            fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)


def describe_data(recipe: Any) -> dict[str, Any]:
    """``kpod data``: rows per split, steps per rationale, rationales kept and dropped."""
    report: dict[str, Any] = {}
    splits = load_data(recipe, report, training=True)
    out: dict[str, Any] = {"source": recipe.data.source.name, "splits": {}, "source_report": report}
    for split, recs in splits.items():
        hist: dict[int, int] = {}
        for r in recs:
            hist[r.n_steps] = hist.get(r.n_steps, 0) + 1
        out["splits"][split] = {
            "records": len(recs),
            "questions": len({r.sample_id.split("#")[0] for r in recs}),
            "with_rationale": sum(1 for r in recs if r.steps),
            "steps_histogram": {str(k): v for k, v in sorted(hist.items())},
            "mean_steps": round(sum(r.n_steps for r in recs) / len(recs), 3) if recs else 0.0,
        }
    return out
