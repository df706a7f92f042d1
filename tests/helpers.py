"""Shared builders for end-to-end tests: tiny recipes that train in seconds on a CPU."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from kpod.recipe import validate_recipe

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
