"""Processes and what ranks exchange: one process, or one rank of ``accelerate launch`` /
torchrun (CPU ranks: DDP over gloo). Weights and the plan are computed on every rank and the main
rank's copy wins; predictions are generated per rank and gathered by sample_id."""

from __future__ import annotations

import gc
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kpod.data.records import Record
from kpod.models.student import Student, StudentError
from kpod.progress import Reporter
from kpod.runs import MetricsWriter


@dataclass
class RunEnv:
    """Where this process runs a recipe: the run directory, its rank, its accelerator and writers."""

    run_dir: Path
    resume: bool
    procs: Any  # accelerate's PartialState
    accelerator: Any  # accelerate's Accelerator
    precision: str  # fp32 | bf16 | fp16, train.precision resolved
    metrics: MetricsWriter
    reporter: Reporter

    @property
    def is_main(self) -> bool:
        return bool(self.accelerator.is_main_process)


def processes() -> Any:
    """accelerate's ``PartialState`` for this process (CPU ranks unless CUDA is there and wanted)."""
    from accelerate import PartialState

    use_cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true") or not torch.cuda.is_available()
    return PartialState(cpu=use_cpu)


def check_precision(precision: str, is_encoder_decoder: bool) -> None:
    """``train.precision`` against the student's kind (known from its configuration)."""
    if precision == "fp16" and is_encoder_decoder:
        raise StudentError(
            "train.precision: fp16 overflows T5-family (encoder-decoder) students; use bf16 or fp32"
        )


def resolve_precision(precision: str, student: Student) -> str:
    check_precision(precision, student.is_encoder_decoder)
    if precision != "auto":
        return precision
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


def make_accelerator(precision: str) -> Any:
    from accelerate import Accelerator

    mixed = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[precision]
    return Accelerator(mixed_precision=mixed)


def is_fsdp(accelerator: Any) -> bool:
    """Whether the model is sharded with FSDP (checkpoints gather it; the chunked loss is off)."""
    return str(accelerator.distributed_type).endswith("FSDP")


def from_main(procs: Any, obj: Any) -> Any:
    """The main process's ``obj`` on every rank (weights and plan must be identical everywhere)."""
    if procs.num_processes == 1:
        return obj
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([obj], from_process=0)[0]


def same_on_every_rank(procs: Any, what: str, obj: Any) -> None:
    if procs.num_processes == 1:
        return
    from accelerate.utils import gather_object

    digests = gather_object([hashlib.sha256(repr(obj).encode()).hexdigest()])
    if len(set(digests)) != 1:
        raise RuntimeError(f"{what} differs between ranks; run `kpod run` once on one process to cache it")


def gather_predictions(preds: list[dict[str, Any]], records: list[Record]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Every rank's predictions, in the split's order (by sample_id), and the split's accuracy."""
    from accelerate.utils import gather_object

    rows = gather_object(preds)
    index = {r.sample_id: i for i, r in enumerate(records)}
    rows.sort(key=lambda p: index[p["sample_id"]])
    if [p["sample_id"] for p in rows] != [r.sample_id for r in records]:
        raise RuntimeError("gathered predictions do not cover the split exactly once")
    correct = sum(p["correct"] for p in rows)
    return {"accuracy": correct / len(rows) if rows else 0.0, "count": len(rows), "correct": correct}, rows


def leave_together(procs: Any, accelerator: Any) -> None:
    """End a multi-process run on every rank at once: a rank exiting mid-talk makes gloo/NCCL abort.

    The DDP wrapper's reducer holds the process group: it is freed first (the caller has dropped
    its trainer), so the group's threads end in destroy_process_group, not during interpreter
    shutdown (an abort there)."""
    if procs.num_processes == 1:
        return
    accelerator.free_memory()
    gc.collect()
    procs.wait_for_everyone()
    procs.destroy_process_group()
