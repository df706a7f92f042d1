"""Shared builders for end-to-end tests: tiny recipes that train in seconds on a CPU."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import torch

from kpod import registry
from kpod.data.collate import StageCollator
from kpod.data.load import load_data, template_from
from kpod.engine.distributed import make_accelerator
from kpod.engine.train import Trainer
from kpod.models.student import load_student
from kpod.recipe import build_component, validate_recipe
from kpod.runs import MetricsWriter
from kpod.schedulers.base import CurriculumPlan

TINY: dict[str, Any] = {
    "name": "tiny",
    "seed": 0,
    "data": {
        "source": {
            "name": "arith",
            "params": {"n_train": 96, "n_validation": 8, "n_test": 8, "n_ood": 4, "max_steps": 3},
        }
    },
    "student": {
        "model": "tiny:llama",
        "tiny": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64},
        "tokenizer": {"vocab_size": 200},
    },
    "train": {
        "epochs": 2,
        "batch_size": 16,
        "lr": 1e-2,
        "warmup_steps": 0,
        "log_every": 1,
        "threads": 1,
    },
    "eval": {"splits": [], "max_new_tokens": 24},
}


TINY_LM = {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64}


def tiny_lm(records: list[Any], template: Any, vocab: int = 150, seed: int = 0) -> Any:
    """A randomly initialised one-layer tiny Llama with a tokenizer trained on ``records``' texts."""
    from kpod.models.config import StudentConfig

    cfg = StudentConfig(model="tiny:llama", tiny=TINY_LM, tokenizer={"vocab_size": vocab})
    return load_student(cfg, [template.serialize(r).text for r in records], seed=seed)


def deep_update(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in patch.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_update(out[k], v)
        else:
            out[k] = v
    return out


def tiny_recipe(**patch: Any) -> Any:
    return validate_recipe(deep_update(TINY, patch), "<test>")


def train_events(run_dir: Path) -> list[dict[str, Any]]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e.get("phase") == "train"]


# the mask-learning + knapsack setup of the end-to-end tests (tiny predictor, two stages)
KPOD_TINY = {
    "weighting": {"name": "mask_learning", "params": {
        "predictor": "tiny:llama", "predictor_tiny": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64},
        "predictor_warmup_steps": 2, "max_steps": 3, "batch_size": 8, "heads": 2, "mlp_hidden": 16}},
    "scheduler": {"name": "kpod_knapsack", "params": {"T": 2}},
    "clusters": {"k": 2, "restarts": 2},
    "loss": {"name": "kpod"},
    "train": {"epochs": 3, "checkpoint_every": 3, "keep_checkpoints": 10},
}


def make_trainer(recipe: Any, run_dir: Path, weights: Any = None) -> tuple[Any, list[Any]]:
    """A Trainer over the recipe's training split with an empty plan (full rationales), fp32."""
    splits = load_data(recipe)
    template = template_from(recipe)
    train = splits["train"]
    torch.manual_seed(0)
    student = load_student(recipe.student, [template.serialize(r).text for r in train], seed=0)
    collator = StageCollator(train, template, student.tokenizer, student.is_encoder_decoder, weights)
    loss_fn = build_component(registry.LOSSES, recipe.loss)
    loss_fn.bind(student, "cpu")  # as kpod/engine/fit.py does (an online teacher loads here)
    return Trainer(
        model=student.model,
        is_encoder_decoder=student.is_encoder_decoder,
        collator=collator,
        loss_fn=loss_fn,
        plan=CurriculumPlan(),
        train_ids=[r.sample_id for r in train],
        cfg=recipe.train,
        seed=recipe.seed,
        run_dir=run_dir,
        accelerator=make_accelerator("fp32"),
        metrics=MetricsWriter(run_dir / "metrics.jsonl", enabled=False),
    ), train


def first_step_grads(trainer: Any) -> list[Any]:
    """The gradients of the first window, captured instead of the optimizer step."""
    grads = []

    def record(*args, **kwargs):
        grads.extend(p.grad.detach().clone() for p in trainer.model.parameters())

    trainer.optimizer.step = record
    epoch, m, window = next(trainer.windows())
    trainer._window([trainer.collator(ids) for ids in window])
    return grads


def crash_after(full: Path, crashed: Path, checkpoint: str) -> None:
    """What a run directory holds after a crash right after ``checkpoint`` was written."""
    crashed.mkdir()
    for name in ("recipe.resolved.yaml", "tokenizer"):
        src = full / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, crashed / name)
    shutil.copytree(full / "checkpoints" / checkpoint, crashed / "checkpoints" / checkpoint)
