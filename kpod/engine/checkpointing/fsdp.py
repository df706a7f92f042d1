"""Full (unsharded) model and optimizer state of an FSDP2-sharded student, for checkpoints.

Under FSDP every rank holds a shard of each parameter and of its optimizer moments. A kpod
checkpoint stays one set of plain files whatever the launch: the model as a full state dict and
the optimizer as a *full* state dict keyed by parameter name (torch.distributed.checkpoint's
format), gathered to the main process. On resume every rank reads the same files and keeps its
own shard. Gathering and sharding are collectives: every rank must call these functions.
"""

from __future__ import annotations

from typing import Any

import torch


def full_state_options(**kw: Any) -> Any:
    """``StateDictOptions`` for full (gathered, unsharded) state dicts, plus ``kw``."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


def full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's full state keyed by parameter name, on CPU (empty on ranks other than 0)."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=full_state_options(cpu_offload=True))


def load_full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Shard a full optimizer state (from :func:`full_optimizer_state`) into this rank's optimizer."""
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state, options=full_state_options())


def load_full_model_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    """Shard a full model state dict into the sharded model; returns (missing, unexpected) keys."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    res = set_model_state_dict(model, state, options=full_state_options(strict=False))
    return list(res.missing_keys), list(res.unexpected_keys)


def is_full_optimizer_state(state: dict[str, Any]) -> bool:
    """True for the name-keyed format above; False for ``optimizer.state_dict()`` (index-keyed)."""
    groups = state.get("param_groups") or [{}]
    params = groups[0].get("params") or []
    keys = list(state.get("state", {})) + list(params)
    return bool(keys) and all(isinstance(k, str) for k in keys)
