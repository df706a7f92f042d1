"""The training tensors of a checkpoint: the model's trainable part, optimizer, LR schedule and
RNG states, gathered from (and sharded back into) every rank under FSDP (``fsdp.py``)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch

from kpod.engine.checkpointing.files import load_file
from kpod.engine.checkpointing.fsdp import (
    full_optimizer_state,
    is_full_optimizer_state,
    load_full_model_state,
    load_full_optimizer_state,
)
from kpod.runs import RunDirError


def frozen_names(model: Any) -> set[str]:
    return {n for n, p in model.named_parameters(remove_duplicate=False) if not p.requires_grad}


def trainable_state(model: Any, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The part of a state dict that training changes: everything, or (LoRA, frozen layers) the
    trainable parameters and buffers. The frozen rest is rebuilt from the base on resume."""
    frozen = frozen_names(model)
    return {k: v for k, v in state.items() if k not in frozen} if frozen else state


def rng_state() -> dict[str, Any]:
    rng: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def restore_rng(rng: dict[str, Any]) -> None:
    torch.set_rng_state(rng["torch"])
    random.setstate(rng["python"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def training_tensors(acc: Any, model: Any, optimizer: Any, lr_scheduler: Any, fsdp: bool) -> dict[str, Any]:
    """The tensor files of a checkpoint, in writing order. Every rank calls it (under FSDP the
    model and optimizer states are gathered from every rank's shard, a collective)."""
    model_state = trainable_state(acc.unwrap_model(model), acc.get_state_dict(model))
    optim_state = full_optimizer_state(model, optimizer.optimizer) if fsdp else optimizer.state_dict()
    return {"model.pt": model_state, "optimizer.pt": optim_state,
            "lr_scheduler.pt": lr_scheduler.state_dict(), "rng.pt": rng_state()}


def load_training_tensors(path: Path, acc: Any, model: Any, optimizer: Any, lr_scheduler: Any, fsdp: bool) -> None:
    """Model (its trainable part), optimizer, LR schedule and RNG states from ``path``."""
    bare = acc.unwrap_model(model)
    saved = load_file(path / "model.pt")
    optim = load_file(path / "optimizer.pt")
    if is_full_optimizer_state(optim) != fsdp:
        written, now = ("without", "with") if fsdp else ("with", "without")
        raise RunDirError(
            f"{path}/optimizer.pt was written {written} FSDP and this run is {now} it: resume with "
            "the launch preset the run started with"
        )
    if fsdp:  # every rank reads the full state and keeps its shard
        missing, unexpected = load_full_model_state(model, saved)
    else:
        missing, unexpected = bare.load_state_dict(saved, strict=False)
    frozen = frozen_names(bare)
    if unexpected or set(missing) - frozen:
        raise RunDirError(
            f"{path}/model.pt does not match the student: missing {sorted(set(missing) - frozen)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}"
        )
    if fsdp:
        load_full_optimizer_state(model, optimizer.optimizer, optim)
    else:
        optimizer.load_state_dict(optim)
    lr_scheduler.load_state_dict(load_file(path / "lr_scheduler.pt"))
    restore_rng(load_file(path / "rng.pt"))
