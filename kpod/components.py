"""What is registered: every component with its kind, provenance and params (``kpod components``),
and the recipe JSON Schema (``kpod schema``)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from kpod import registry


def params_table(model: type[BaseModel]) -> list[dict[str, Any]]:
    rows = []
    for name, f in model.model_fields.items():
        default = None if f.default is PydanticUndefined else f.default
        if isinstance(default, BaseModel):
            default = default.model_dump(mode="json")
        rows.append(
            {
                "name": name,
                "type": getattr(f.annotation, "__name__", str(f.annotation)).replace("typing.", ""),
                "required": f.is_required(),
                "default": default,
                "description": f.description or "",
            }
        )
    return rows


def describe_components() -> list[dict[str, Any]]:
    """One row per registered component (built-ins and plugins), sorted by kind and name."""
    registry.discover()
    out = []
    for kind, reg in registry.ALL_REGISTRIES.items():
        for name, obj in reg.items():
            prov = reg.provenance(name)
            params = getattr(obj, "Params", None)
            out.append(
                {
                    "kind": kind,
                    "name": name,
                    "distribution": prov.distribution,
                    "version": prov.version,
                    "module": prov.module,
                    "summary": ((obj.__doc__ or "").strip().splitlines() or [""])[0],
                    "params": params_table(params) if isinstance(params, type) and issubclass(params, BaseModel) else [],
                }
            )
    return out


def recipe_schema() -> dict[str, Any]:
    """JSON Schema of the recipe for the components registered now (plugins included)."""
    from kpod.recipe import recipe_model

    schema = recipe_model().model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "kpod recipe"
    return schema
