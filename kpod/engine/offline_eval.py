"""``kpod eval``: evaluate a saved model on any split or data source, without training.

The model is a run directory (``RUN/model`` with ``RUN/recipe.resolved.yaml``), a model directory
written by kpod or ``save_pretrained`` (full weights or a LoRA adapter), or a Hugging Face hub id.
Evaluation is the run's own :class:`~kpod.engine.evaluate.Evaluator`, configured by the recipe's
``eval`` section, with the recipe's prompt template (:func:`template_from`, the one training used);
so a run's model evaluated on a split the run evaluated gives the same predictions and accuracy.

``--data`` changes where the questions come from, leaving template and extractor as they are:

* ``NAME:PATH`` — a registered source reading one local file as the evaluated split
  (``svamp:../shared/data/mcc_kd/SVAMP/dev.json``); the paper's out-of-distribution protocol is a
  GSM8K run evaluated with ``--data asdiv:… --data svamp:…``;
* ``PATH.jsonl`` / ``PATH.json`` — the ``local`` source (fields question, rationale, answer);
* ``LABEL:PATH.jsonl`` — the same, labelled ``LABEL`` (any name that is not a source);
* ``PATH.yaml`` — the ``data`` section of another recipe;
* ``NAME`` — a registered source with its default params (``arith``).

Outputs in ``OUT``: ``predictions.jsonl`` (one row per question, keyed by sample_id) and
``summary.json`` (``splits``: accuracy, correct, count per evaluated split, as in a run's summary).
With ``--data``, split names are qualified by the data label: ``svamp/validation``.
"""

from __future__ import annotations

import contextlib
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import kpod
from kpod import registry
from kpod.data.load import load_data, template_from
from kpod.data.records import DataError, Record
from kpod.engine.capabilities import check_vllm_environment, check_vllm_student
from kpod.engine.evaluate import Evaluator
from kpod.engine.prepare import max_length_for, seed_everything
from kpod.models.student import (
    Student,
    StudentError,
    load_pretrained,
    load_saved,
    pretrained_config,
    pretrained_tokenizer,
)
from kpod.progress import Reporter, silence_transformers_progress
from kpod.recipe import RecipeError, dump_recipe, load_recipe, validate_recipe
from kpod.recipe.safe_yaml import read_yaml_file
from kpod.recipe_types import Recipe
from kpod.runs import atomic_write_text, write_json, write_jsonl, writing


@dataclass
class EvalTarget:
    model: str  # what load_saved gets: a directory or a hub id
    run_dir: Path | None  # the run it came from, if any
    recipe: Path | None  # that run's resolved recipe
    gguf_file: str | None = None  # a GGUF checkpoint in ``model`` (de-quantized once and cached)


def resolve_target(path: str | Path) -> EvalTarget:
    """A run directory, a model directory (inside a run or not), or a hub id."""
    p = Path(path)
    if p.is_dir() and (p / "recipe.resolved.yaml").exists():
        if not (p / "model").is_dir():
            raise StudentError(f"{p}: run directory without a model/ (did the run finish?)")
        return EvalTarget(str(p / "model"), p, p / "recipe.resolved.yaml")
    if p.is_dir():
        parent = p.parent / "recipe.resolved.yaml"
        run = p.parent if parent.exists() else None
        return EvalTarget(str(p), run, parent if run else None)
    if p.suffix == ".gguf":
        if not p.is_file():
            raise StudentError(f"{p}: no such GGUF file")
        return EvalTarget(str(p.parent), None, None, gguf_file=p.name)
    if not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", str(path)) or str(path).startswith("."):
        raise StudentError(f"{p}: no such run or model directory")
    return EvalTarget(str(path), None, None)  # a hub id such as org/name (needs network unless cached)


@dataclass
class DataChoice:
    label: str
    source: dict[str, Any] | None  # a data.source section, or
    data: dict[str, Any] | None  # a whole data section


def parse_data(spec: str, split: str) -> DataChoice:
    """One ``--data`` value (see the module docstring); ``split`` receives a single file."""
    registry.discover()
    sources = registry.DATA_SOURCES
    name, sep, rest = spec.partition(":")
    if sep and name in sources:
        return DataChoice(name, {"name": name, "params": {"files": {split: rest}}}, None)
    p = Path(spec)
    if sep and Path(rest).suffix.lower() in (".json", ".jsonl") and not p.exists():
        # LABEL:FILE with a label that is not a source: the file through `local`, under that label
        if not re.fullmatch(r"[\w.-]+", name):
            raise RecipeError(f"--data {spec}: the label {name!r} before ':' may hold only letters, digits, '_', '.', '-'")
        if not Path(rest).is_file():
            raise RecipeError(f"--data {spec}: no such file {rest!r} ({name!r} is not a data source, so it is "
                              "taken as a label for a local .json/.jsonl file)")
        return DataChoice(name, {"name": "local", "params": {"files": {split: rest}}}, None)
    if p.suffix.lower() in (".yaml", ".yml"):
        if not p.exists():
            raise RecipeError(f"--data {spec}: no such file")
        raw = read_yaml_file(p) or {}  # bounded like a recipe (size, depth, aliases)
        data = raw.get("data") if isinstance(raw, dict) and "data" in raw else raw
        if not isinstance(data, dict):
            raise RecipeError(f"--data {spec}: expected a recipe or a data section (a mapping)")
        return DataChoice(p.stem, None, data)
    if p.suffix.lower() in (".json", ".jsonl"):
        if not p.exists():
            raise RecipeError(f"--data {spec}: no such file")
        return DataChoice(p.stem, {"name": "local", "params": {"files": {split: str(p)}}}, None)
    if spec in sources:
        return DataChoice(spec, {"name": spec}, None)
    raise RecipeError(
        f"--data {spec!r}: expected NAME:PATH, a .json/.jsonl file, a recipe .yaml, or a data source "
        f"({', '.join(sources.names())})"
    )


def with_data(recipe: Recipe, choice: DataChoice, where: str) -> Recipe:
    """The recipe with its data source (or whole data section) replaced; template kept."""
    raw = recipe.model_dump(mode="json")
    if choice.data is not None:
        template = raw["data"]["template"]
        raw["data"] = {**choice.data, "template": template}  # training's template, always
    else:
        raw["data"]["source"] = choice.source
    return validate_recipe(raw, f"{where} (--data {choice.label})")


def evaluate_saved(
    target: str | Path,
    recipe_path: str | Path | None = None,
    *,
    splits: list[str] | None = None,
    data: list[str] | None = None,
    overrides: list[str] | None = None,
    out_dir: str | Path | None = None,
    quiet: bool = False,
) -> dict[str, Any]:
    """``kpod eval``: returns the summary (also written to ``OUT/summary.json``)."""
    t0 = time.perf_counter()
    silence_transformers_progress()
    tgt = resolve_target(target)
    rpath = Path(recipe_path) if recipe_path is not None else tgt.recipe
    if rpath is None:
        raise RecipeError(f"{target}: not a run directory; give the recipe its model was trained with (--recipe)")
    recipe = load_recipe(rpath, overrides or [])
    seed_everything(recipe.seed)
    reporter = Reporter(quiet=quiet)
    first_split = (splits or ["test"])[0]
    choices = [parse_data(d, first_split) for d in data or []]
    jobs = [(c.label, with_data(recipe, c, str(rpath))) for c in choices] or [("", recipe)]

    if recipe.eval.backend == "vllm":
        student, config = vllm_target(tgt, recipe)
        device = torch.device("cpu")  # not used: vLLM places the model itself
    else:
        student, device = load_target_model(tgt)
        config = student.model.config
    evaluator = Evaluator(
        recipe, student.tokenizer, student.is_encoder_decoder,
        template_from(recipe),  # the recipe's template: the one training used
        max_length_for(recipe, config, student.is_encoder_decoder), reporter, device=device,
    )
    vllm = recipe.eval.backend == "vllm"  # the engine over the model directory generates
    with evaluator.vllm(tgt.model) if vllm else contextlib.nullcontext():
        for label, rec in jobs:
            evaluate_data(evaluator, student.model, label, rec, splits)
    out = Path(out_dir) if out_dir is not None else default_eval_dir(tgt, [c.label for c in choices])
    summary = {
        "kind": "eval",
        "kpod_version": kpod.__version__,
        "model": tgt.model,
        "run_dir": str(tgt.run_dir) if tgt.run_dir else None,
        "recipe": recipe.name,
        "recipe_file": str(rpath),
        "data": [c.label for c in choices] or [recipe.data.source.name],
        "splits": evaluator.results,
        "data_report": evaluator.data_report,
        "wall_seconds": {"total": round(time.perf_counter() - t0, 3)},
        "finished": True,
    }
    write_outputs(out, summary, evaluator.predictions, recipe)
    summary["out"] = str(out)
    return summary


def load_target_model(tgt: EvalTarget) -> tuple[Student, torch.device]:
    """The model to evaluate, moved to the GPU when there is one."""
    if tgt.gguf_file is not None:  # the same GGUF path as student.gguf_file (kpod/engine/gguf.py)
        student = load_pretrained(tgt.model, gguf_file=tgt.gguf_file, field="kpod eval MODEL", gguf_field="kpod eval MODEL")
    else:
        student = load_saved(tgt.model)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    student.model.to(device)
    return student, device


def vllm_target(tgt: EvalTarget, recipe: Recipe) -> tuple[Student, Any]:
    """``eval.backend: vllm``: the tokenizer only (vLLM loads the weights itself, from ``tgt.model``)
    and its config. Refused where vLLM cannot run, and for GGUF files and LoRA adapter directories
    (vLLM gets a plain model directory: ``kpod export`` merges an adapter into one)."""
    check_vllm_environment(recipe)
    if tgt.gguf_file is not None:
        raise RecipeError(f"eval.backend: vllm: {tgt.model}/{tgt.gguf_file} is a GGUF file; vllm evaluates a "
                          "Hugging Face model directory; use eval.backend: kpod")
    if (Path(tgt.model) / "adapter_config.json").exists():
        raise RecipeError(f"eval.backend: vllm: {tgt.model} holds a LoRA adapter, and vllm loads full weights: "
                          f"`kpod export {tgt.model} --out merged/`, then evaluate merged/")
    name, _, config = pretrained_config(tgt.model, field="kpod eval MODEL")
    student = Student(None, pretrained_tokenizer(name, field="kpod eval MODEL"), bool(config.is_encoder_decoder),
                      tgt.model)
    check_vllm_student(recipe, student.is_encoder_decoder)
    return student, config


def wanted_splits(label: str, rec: Recipe, loaded: dict[str, list[Record]], splits: list[str] | None) -> list[str]:
    """The splits to evaluate: ``--split`` if given, else every split of another data source
    but train, else (the recipe's own data) the recipe's ``eval.splits`` that the data has."""
    if splits:
        wanted = splits
    elif label:  # another data source: every split it has but train
        wanted = [s for s in loaded if s != "train"]
    else:  # as the run evaluated: the recipe's eval.splits that the data has
        wanted = [s for s in rec.eval.splits if s in loaded]
    if not wanted:
        raise DataError(f"nothing to evaluate: {rec.data.source.name} has splits {', '.join(loaded) or 'none'}; choose with --split")
    for split in wanted:
        if split not in loaded:
            raise DataError(f"--split {split}: not in the data ({rec.data.source.name} has: {', '.join(loaded) or 'none'})")
    return wanted


def evaluate_data(evaluator: Evaluator, model: Any, label: str, rec: Recipe, splits: list[str] | None) -> None:
    """Load ``rec``'s data (``label``: its ``--data`` label, "" for the recipe's own) and evaluate
    the wanted splits, keyed ``label/split`` (or ``split``); rows skipped as bad are reported."""
    report: dict[str, Any] = {}
    loaded = load_data(rec, report, training=False, require_train=False)
    if report.get("bad_rows", {}).get("count"):
        evaluator.data_report.setdefault("bad_rows", {})[label or rec.data.source.name] = report["bad_rows"]
    for split in wanted_splits(label, rec, loaded, splits):
        key = f"{label}/{split}" if label else split
        evaluator.record(model, split, loaded[split], key=key, data_rules=rec)


def write_outputs(out: Path, summary: dict[str, Any], predictions: list[dict[str, Any]], recipe: Recipe) -> None:
    """``OUT/predictions.jsonl``, ``OUT/summary.json`` and ``OUT/recipe.resolved.yaml``."""
    with writing(out):
        out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "predictions.jsonl", predictions)
    write_json(out / "summary.json", summary)
    atomic_write_text(out / "recipe.resolved.yaml", dump_recipe(recipe))


def default_eval_dir(tgt: EvalTarget, labels: list[str]) -> Path:
    """``RUN/eval/<data>`` for a run; ``runs/eval/<model name>-<data>`` otherwise."""
    tag = "+".join(labels) or "recipe-data"
    if tgt.run_dir is not None:
        return tgt.run_dir / "eval" / tag
    return Path("runs") / "eval" / f"{Path(tgt.model).name}-{tag}"
