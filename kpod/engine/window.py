"""One accumulation window's statistics: what each micro-batch adds, the non-finite check, and
the figures logged per optimizer step (``StepLog``).

The statistics stay on the device as one float64 vector per window (one host sync per step, not
per micro-batch) and are summed over ranks before they are read, so the log shows the global
window, and a non-finite loss on any rank stops every rank.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from kpod.losses.base import TokenLoss
from kpod.runs import MetricsWriter

# the window sums, in the order of the statistics vector (its last entry: the non-finite count)
STAT_KEYS = ("wsum", "rat_nll", "rat_n", "ans_nll", "ans_n", "w_rat", "tokens")


class NonFiniteLossError(RuntimeError):
    """A window's loss is not finite, or its total target weight is zero."""


@dataclass
class WindowSums:
    """What a window's micro-batches add up to on this rank, on the device."""

    stats: torch.Tensor  # float64 [len(STAT_KEYS) + 1]
    extra: torch.Tensor  # float64, 0-dim: the sum of the loss's non-token terms (TokenLoss.extra)
    losses: list[tuple[int, torch.Tensor]] = field(default_factory=list)  # (micro-batch index, its loss)

    @classmethod
    def zeros(cls, device: torch.device) -> WindowSums:
        return cls(torch.zeros(len(STAT_KEYS) + 1, dtype=torch.float64, device=device),
                   torch.zeros((), dtype=torch.float64, device=device))

    @torch.no_grad()
    def add(self, i: int, tl: TokenLoss, loss: torch.Tensor) -> None:
        """Micro-batch ``i``'s per-token values ``tl`` and the loss it back-propagated."""
        rat = tl.mask & ~tl.is_answer
        self.losses.append((i, loss))
        if tl.extra is not None:
            self.extra += tl.extra.detach().double()
        self.stats += torch.stack([
            (tl.nll * tl.weight).sum(), (tl.nll * rat).sum(), rat.sum(), (tl.nll * tl.is_answer).sum(),
            tl.is_answer.sum(), (tl.weight * rat).sum(), tl.mask.sum(), (~torch.isfinite(loss)).sum(),
        ]).double()


def window_values(stats: torch.Tensor) -> dict[str, float]:
    """The (rank-summed) statistics vector by name, ``nonfinite`` last."""
    return dict(zip((*STAT_KEYS, "nonfinite"), stats.tolist()))


def is_finite(values: dict[str, float]) -> bool:
    return not values["nonfinite"] and math.isfinite(values["wsum"])


def non_finite_error(
    losses: list[tuple[int, torch.Tensor]], batches: list[dict[str, Any]], step: int, epoch: int
) -> NonFiniteLossError:
    """The error for a non-finite window: its step, epoch and the first bad micro-batch's
    sample_ids (or that it was on another rank)."""
    culprits = [(i, float(v)) for i, v in losses if not math.isfinite(float(v))]
    i, value = culprits[0] if culprits else (None, float("nan"))
    ids = ", ".join(batches[i]["sample_ids"][:16]) if i is not None else "(on another rank)"
    return NonFiniteLossError(f"non-finite loss {value} at step {step} (epoch {epoch}); batch sample_ids: {ids}")


def window_metrics(values: dict[str, float], denom: float, grad_norm: float | None) -> dict[str, float]:
    """The step's logged figures: the optimised loss Σw·ℓ/Σw, the mean CE of rationale and answer
    tokens, the mean rationale weight, the target tokens and the gradient norm before clipping."""
    def mean(num: str, count: str) -> float:
        return values[num] / values[count] if values[count] else float("nan")

    return {
        "loss": values["wsum"] / denom,
        "ce_rationale": mean("rat_nll", "rat_n"),
        "ce_answer": mean("ans_nll", "ans_n"),
        "weight_mean": mean("w_rat", "rat_n"),
        "tokens": values["tokens"],
        "grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
    }


class StepLog:
    """``phase="train"`` metrics events: every ``log_every`` steps and at the last step, each with
    the target tokens per second since the one before."""

    def __init__(self, metrics: MetricsWriter, log_every: int, last_step: int) -> None:
        self.metrics, self.log_every, self.last_step = metrics, log_every, last_step
        self.since, self.tokens = time.perf_counter(), 0.0

    def __call__(self, step: int, epoch: int, lr: float, stats: dict[str, float]) -> None:
        """Count the step's tokens; on a logged step add ``tokens_per_s`` to ``stats`` and write them."""
        self.tokens += stats["tokens"]
        if step % self.log_every and step != self.last_step:
            return
        now = time.perf_counter()
        stats["tokens_per_s"] = self.tokens / max(now - self.since, 1e-9)
        self.since, self.tokens = now, 0.0
        self.metrics.write(phase="train", step=step, epoch=epoch, lr=lr, **{k: round(v, 5) for k, v in stats.items()})
