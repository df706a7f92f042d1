"""The recipe's error type and the strict base of every section (unknown keys are errors)."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field


class RecipeError(ValueError):
    """A recipe problem; the message names the file and the dotted field path."""


class Strict(BaseModel):
    # unknown keys are errors; so are inf and NaN in float fields (`train.lr: .inf`, `1e309`)
    model_config = ConfigDict(extra="forbid", protected_namespaces=(), allow_inf_nan=False)


# Seeds reach random, numpy (32-bit) and torch (64-bit signed): one range every library takes.
Seed = Annotated[int, Field(ge=0, lt=2**32, description="0 ≤ seed < 2³²")]


def _plain_name(name: str) -> str:
    """A run name is a directory name under runs/: no path separators, not "." or ".."."""
    if not name or any(c in name for c in "/\\\0") or name in (".", ".."):
        raise ValueError("a run name is one directory name: no '/', '\\', NUL, and not '.' or '..'")
    return name


RunName = Annotated[str, AfterValidator(_plain_name)]
