"""The learning-rate schedule: linear warm-up, then constant, linear or cosine decay to a floor."""

from __future__ import annotations

import math
from collections.abc import Callable

from kpod.recipe import TrainConfig


def lr_lambda(cfg: TrainConfig, total_steps: int) -> Callable[[int], float]:
    warm, floor = cfg.warmup_steps, cfg.min_lr_ratio

    def f(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        if cfg.lr_schedule == "constant" or total_steps <= warm:
            return 1.0
        progress = min(1.0, (step - warm) / max(1, total_steps - warm))
        if cfg.lr_schedule == "linear":
            return floor + (1.0 - floor) * (1.0 - progress)
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return f
