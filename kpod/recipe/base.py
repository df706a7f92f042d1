"""The recipe's error type and the strict base of every section (unknown keys are errors)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class RecipeError(ValueError):
    """A recipe problem; the message names the file and the dotted field path."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())
