"""The evaluation room's engine side: one :class:`Evaluator`, configured by the recipe's ``eval``
section, used by model selection during training, the final evaluation of a run
(:func:`evaluate_splits`) and ``kpod eval`` (kpod/engine/offline_eval.py).

Generation and scoring are :func:`kpod.eval.generate.evaluate_split`, called from
:meth:`Evaluator.score` only; answers are read by the recipe's extractor (kpod/eval/answers.py).
What can run at all (vLLM, an encoder-decoder student, packing) is checked before a run directory
exists (kpod/engine/capabilities.py).

``eval.backend: vllm`` applies to the final evaluation and ``kpod eval``, from a saved model
directory (:meth:`Evaluator.vllm`); model selection during training keeps kpod's loop on the model
in memory, since a vLLM engine would have to be started from a fresh save at every selection pass
(seconds to minutes each: loading, CUDA graph capture), more than it saves on a validation subset.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kpod import registry
from kpod.data.load import fit_eval_prompts
from kpod.data.records import Record
from kpod.data.template import PromptTemplate
from kpod.engine.distributed import RunEnv, gather_predictions
from kpod.engine.prepare import Setup
from kpod.eval import vllm_backend
from kpod.eval.generate import evaluate_split
from kpod.progress import Reporter
from kpod.recipe import RecipeError, build_component
from kpod.recipe_types import Recipe


class Evaluator:
    """A student's accuracy and predictions on split after split, as the recipe's ``eval`` section
    says (batch size, new tokens, stop rule, backend, extractor, limit).

    Prompts longer than ``max_length`` follow ``data.on_too_long`` (skipped ones are counted in
    ``data_report``). Under several processes (``procs``) each rank generates its share and every
    rank gets the gathered result. :meth:`score` returns a split's result; :meth:`record` also
    keeps it in ``results`` and ``predictions`` (the final evaluation, ``kpod eval``)."""

    def __init__(
        self, recipe: Recipe, tokenizer: Any, is_encoder_decoder: bool, template: PromptTemplate, max_length: int,
        reporter: Reporter, *, device: torch.device, procs: Any = None, data_report: dict[str, Any] | None = None,
    ) -> None:
        self.recipe, self.tokenizer, self.is_encoder_decoder = recipe, tokenizer, is_encoder_decoder
        self.template, self.max_length, self.reporter = template, max_length, reporter
        self.device, self.procs = device, procs
        self.extractor = build_component(registry.ANSWER_EXTRACTORS, recipe.eval.extractor)
        self.data_report: dict[str, Any] = {} if data_report is None else data_report
        self.results: dict[str, dict[str, Any]] = {}  # key -> accuracy, count, correct
        self.predictions: list[dict[str, Any]] = []  # every recorded sample, keyed by sample_id
        self.generator: vllm_backend.VllmGenerator | None = None  # inside :meth:`vllm`

    @classmethod
    def for_run(cls, recipe: Recipe, setup: Setup, env: RunEnv) -> Evaluator:
        """The run's evaluator: its student's tokenizer, template and length, every rank's share."""
        if recipe.eval.select_on is not None and recipe.eval.select_on not in setup.splits:
            raise RecipeError(
                f"eval.select_on: split {recipe.eval.select_on!r} is not in the data (have: "
                f"{', '.join(setup.splits)}); name another split, or set eval.select_on: null to report the final model"
            )
        return cls(recipe, setup.tokenizer, setup.student.is_encoder_decoder, setup.template, setup.max_length,
                   env.reporter, device=env.accelerator.device, procs=env.procs, data_report=setup.data_report)

    def score(
        self, model: Any, split: str, records: list[Record], *, key: str | None = None, limit: int | None = None,
        progress: bool = True, data_rules: Recipe | None = None,
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Accuracy and predictions of ``model`` on the first ``limit`` of ``records`` (the split
        ``split``, reported as ``key``). ``data_rules``: the recipe whose ``data.on_too_long``
        applies (``kpod eval --data``: the data's own; default the evaluator's recipe).

        Inside :meth:`vllm` the engine generates (``model`` may be None); otherwise kpod's loop, or
        ``model.generate`` under ``eval.backend: hf``."""
        cfg, key = self.recipe.eval, key or split
        recs = records[:limit] if limit else records
        recs = fit_eval_prompts(data_rules or self.recipe, split, recs, self.template, self.tokenizer,
                                self.max_length, self.data_report, self.reporter.warn)
        ranks, rank = (self.procs.num_processes, self.procs.process_index) if self.procs is not None else (1, 0)
        mine = recs[rank::ranks]
        with self.reporter.task(f"eval {key}", total=len(mine), enabled=progress) as advance:
            res, preds = evaluate_split(
                model, self.tokenizer, mine, self.template, self.extractor, self.is_encoder_decoder,
                batch_size=cfg.batch_size, max_new_tokens=cfg.max_new_tokens, device=self.device, split=key,
                on_batch=lambda n: advance(n, ""), stop_at_answer=cfg.stop_at_answer,
                # vllm outside :meth:`vllm` (model selection): kpod's loop on the model in memory
                backend="kpod" if cfg.backend == "vllm" else cfg.backend, generator=self.generator,
            )
        if ranks > 1:
            res, preds = gather_predictions(preds, recs)
        return res, preds

    def record(
        self, model: Any, split: str, records: list[Record], *, key: str | None = None,
        data_rules: Recipe | None = None,
    ) -> dict[str, Any]:
        """:meth:`score` on at most ``eval.limit`` records, kept under ``key`` and reported."""
        key = key or split
        res, preds = self.score(model, split, records, key=key, limit=self.recipe.eval.limit, data_rules=data_rules)
        self.results[key] = res
        self.predictions.extend(preds)
        self.reporter.info(f"{key}: accuracy {res['accuracy']:.3f} ({res['correct']}/{res['count']})")
        return res

    @contextlib.contextmanager
    def vllm(self, model_dir: str | Path) -> Iterator[None]:
        """Within the block a vLLM engine over ``model_dir`` (``eval.vllm`` options) generates."""
        self.generator = vllm_generator(self.recipe, str(model_dir), self.tokenizer)
        try:
            yield
        finally:
            self.generator.close()
            self.generator = None


@dataclass
class Evaluation:
    results: dict[str, dict[str, Any]]  # accuracy, count, correct per split
    predictions: list[dict[str, Any]]  # every evaluated sample, keyed by sample_id
    missing_splits: list[str]  # eval.splits the data does not have


def evaluate_splits(
    evaluator: Evaluator, model: Any, splits: dict[str, list[Record]], env: RunEnv,
    *, step: int, model_step: int | None, model_dir: Path | None = None,
) -> Evaluation:
    """A run's final evaluation: every ``eval.splits`` split the data has, on ``model`` (trained
    for ``step`` optimizer steps; ``model_step`` is the step of the weights it holds, the selected
    one). Under ``eval.backend: vllm`` a vLLM engine generates from ``model_dir``, where the run
    saved ``model``."""
    cfg = evaluator.recipe.eval
    wanted = [s for s in cfg.splits if s in splits]
    engine: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
    if cfg.backend == "vllm" and wanted:
        if model_dir is None:
            raise ValueError("eval.backend: vllm needs the directory the evaluated model was saved to")
        release_training_memory(model, env)
        engine = evaluator.vllm(model_dir)
    with engine:
        for split in cfg.splits:
            if split not in splits:
                env.reporter.warn(f"eval.splits: split {split!r} is not in the data (have: {', '.join(splits)})")
                continue
            res = evaluator.record(model, split, splits[split])
            env.metrics.write(phase="eval", split=split, step=step, model_step=model_step, **res)
    return Evaluation(evaluator.results, evaluator.predictions, [s for s in cfg.splits if s not in splits])


def vllm_generator(recipe: Recipe, model_dir: str, tokenizer: Any) -> vllm_backend.VllmGenerator:
    """A vLLM engine over ``model_dir`` with the recipe's ``eval.vllm`` options."""
    opts = recipe.eval.vllm
    return vllm_backend.VllmGenerator(
        model_dir, tokenizer, recipe.eval.max_new_tokens,
        vllm_backend.VllmOptions(opts.gpu_memory_utilization, opts.dtype, opts.enforce_eager, recipe.seed),
    )


def release_training_memory(model: Any, env: RunEnv) -> None:
    """Before vLLM starts: the trained model leaves the GPU and accelerate lets go of the optimizer
    state, since vLLM loads its own copy of the saved weights and takes a fraction of GPU memory
    that must be free (``eval.vllm.gpu_memory_utilization``). An FSDP model (``--launch fsdp``
    with one process) stays where it is: its parameters belong to FSDP's sharding."""
    fsdp = str(env.accelerator.distributed_type).endswith("FSDP")
    env.accelerator.free_memory()
    if not fsdp:
        model.to("cpu")
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
