"""Recipe files → a validated Recipe: YAML, ``extends``, ``${ENV}``, ``--set``, errors with field paths."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from kpod import registry
from kpod.recipe.base import RecipeError
from kpod.recipe.safe_yaml import load_yaml, read_yaml_file, yaml_error_text
from kpod.recipe.schema import COMPONENT_FIELDS, build_component, recipe_model

_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _expand_env(obj: Any, path: str, where: str) -> Any:
    if isinstance(obj, dict):
        return {k: _expand_env(v, f"{path}.{k}" if path else str(k), where) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_expand_env(v, f"{path}[{i}]", where) for i, v in enumerate(obj)]
    if isinstance(obj, str):

        def sub(m: re.Match[str]) -> str:
            if m.group(1) not in os.environ:
                raise RecipeError(f"{where}: {path}: environment variable ${{{m.group(1)}}} is not set")
            return os.environ[m.group(1)]

        return _ENV_RE.sub(sub, obj)
    return obj


def _short(text: str) -> str:
    """An override as quoted in an error: at most 80 characters."""
    return repr(text) if len(text) <= 80 else f"{text[:60]!r}… ({len(text):,} characters)"


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.lr=1e-3"`` → (["train", "lr"], "1e-3" typed later by the schema)."""
    if "=" not in text:
        raise RecipeError(f"--set {_short(text)}: expected KEY=VALUE, e.g. --set train.lr=1e-3")
    key, value = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", p) for p in parts):
        raise RecipeError(f"--set {_short(text)}: {key!r} is not a dotted field path")
    try:
        parsed = load_yaml(value) if value.strip() else ""
    except yaml.YAMLError as e:
        raise RecipeError(f"--set {_short(text)}: value is not valid YAML ({yaml_error_text(e)[1]})") from None
    return parts, parsed


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``--set`` flags. Order-independent for component switches: every ``X.name=`` flag is
    applied first (dropping X's old params), then the others in the order given, so
    ``--set weighting.params.high=3 --set weighting.name=b`` keeps ``high=3`` either way round."""
    parsed = [(text, *parse_override(text)) for text in overrides]
    parsed.sort(key=lambda t: t[1][-1] != "name")  # stable: name switches first
    for text, parts, value in parsed:
        node: Any = raw
        for i, p in enumerate(parts[:-1]):
            if node.get(p) is None:
                node[p] = {}
            node = node[p]
            if not isinstance(node, dict):
                raise RecipeError(f"--set {_short(text)}: {'.'.join(parts[: i + 1])} is not a section")
        last = parts[-1]
        # switching a component drops the old component's params unless they are set too
        if last == "name" and node.get("name") not in (None, value):
            node.pop("params", None)
        node[last] = value
    return raw


def _clean_loc(loc: tuple[Any, ...]) -> list[str]:
    """Drop the discriminator tag pydantic inserts after a component field's path."""
    paths = {p for p, _, _ in COMPONENT_FIELDS}
    return [
        str(p)
        for i, p in enumerate(loc)
        if not (tuple(loc[:i]) in paths and p not in ("name", "params"))
    ]


def format_validation_error(err: ValidationError, where: str) -> str:
    lines = []
    for e in err.errors():
        path = ".".join(_clean_loc(tuple(e["loc"]))) or "(top level)"
        msg = "unknown key (not allowed here)" if e["type"] == "extra_forbidden" else e["msg"]
        lines.append(f"{where}: {path}: {msg}")
    return "\n".join(lines)


def _check_component_names(raw: dict[str, Any], where: str) -> None:
    for path, reg, _ in COMPONENT_FIELDS:
        node: Any = raw
        for p in path:
            node = node.get(p) if isinstance(node, dict) else None
        if node is None:
            continue
        dotted = ".".join(path)
        if not isinstance(node, dict):
            raise RecipeError(f"{where}: {dotted}: expected a section with 'name' (and 'params')")
        name = node.get("name")
        if not isinstance(name, str):
            raise RecipeError(f"{where}: {dotted}.name: required, one of {', '.join(reg.names())}")
        if name not in reg:
            raise RecipeError(f"{where}: {dotted}.name: {reg.miss_message(name)}")


def validate_recipe(raw: Any, where: str = "<recipe>") -> Any:
    """Validate a raw mapping into a Recipe (the model from :func:`recipe_model`)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise RecipeError(f"{where}: the recipe must be a mapping at the top level, got {type(raw).__name__}")
    model = recipe_model()
    raw = _expand_env(raw, "", where)
    _check_component_names(raw, where)
    try:
        recipe = model.model_validate(raw)
    except ValidationError as e:
        raise RecipeError(format_validation_error(e, where)) from None
    _cross_field_rules(recipe, where)
    return recipe


def _cross_field_rules(recipe: Any, where: str) -> None:
    if not recipe.data.template.use_rationale and recipe.scheduler.name != "none":
        raise RecipeError(
            f"{where}: scheduler.name: {recipe.scheduler.name!r} needs rationales, but "
            "data.template.use_rationale is false; use scheduler 'none'"
        )
    # a scheduler paced by the validation score (icl with pace: validation) needs the evaluation
    scheduler = registry.SCHEDULERS.get(recipe.scheduler.name)(recipe.scheduler.params)
    if "validation_score" in getattr(scheduler, "epoch_stats", ()) and recipe.eval.select_on is None:
        raise RecipeError(
            f"{where}: eval.select_on: null, but scheduler {recipe.scheduler.name!r} (scheduler.params: "
            f"{recipe.scheduler.params.model_dump()}) paces on EpochStats.validation_score, the "
            "eval.select_on score at each epoch end; set eval.select_on (e.g. validation) or another pace"
        )
    # a dynamic weighting strategy (dft, entropy) is computed inside a loss that reads token weights
    if getattr(registry.WEIGHTING.get(recipe.weighting.name), "dynamic", False):
        problem = build_component(registry.LOSSES, recipe.loss).dynamic_problem()
        if problem is not None:
            raise RecipeError(f"{where}: weighting.name: {recipe.weighting.name!r} is dynamic, but {problem}")
    # a loss that compares padded rows (mcc_kd) rules out the fast paths a recipe may ask for by value
    full_logits = registry.LOSSES.get(recipe.loss.name).needs_full_logits
    if full_logits is not None and recipe.train.packing is True:
        raise RecipeError(f"{where}: train.packing: true, but {full_logits} (loss.name: {recipe.loss.name}); "
                          "set train.packing: false or auto")
    if full_logits is not None and recipe.train.loss_chunk_tokens not in (0, "auto"):
        raise RecipeError(f"{where}: train.loss_chunk_tokens: {recipe.train.loss_chunk_tokens}, but {full_logits} "
                          f"(loss.name: {recipe.loss.name}); set it to 0 (full logits) or auto")
    # a data format whose records need a particular loss (Specialized KD's distribution matching)
    problem = build_component(registry.DATA_FORMATS, recipe.data.format).loss_problem(build_component(registry.LOSSES, recipe.loss))
    if problem is not None:
        raise RecipeError(f"{where}: {problem} (loss.name: {recipe.loss.name})")
    # a loss that weighs a method's tasks (dsbs, scott) needs the data format that makes them
    needed = registry.LOSSES.get(recipe.loss.name).data_format
    if needed is not None and recipe.data.format.name != needed:
        raise RecipeError(
            f"{where}: loss.name: {recipe.loss.name!r} weighs the tasks of data.format {needed!r}, "
            f"but data.format.name is {recipe.data.format.name!r}; set data.format.name: {needed}"
        )


def _deep_merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in patch.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            # a component switched by name drops the base component's params, even when the
            # patch brings params of its own (they belong to the new component only)
            if "name" in v and v.get("name") != out[k].get("name"):
                out[k] = {kk: vv for kk, vv in out[k].items() if kk != "params"}
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _read_raw(path: Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """YAML of one recipe file, with ``extends: other.yaml`` (relative to it) merged underneath."""
    where = str(path)
    if path.resolve() in chain or len(chain) > 8:
        raise RecipeError(f"{where}: extends: circular or too deep ({' -> '.join(map(str, chain))})")
    raw = read_yaml_file(path)  # a regular file, size, depth and alias expansion bounded
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise RecipeError(f"{where}: the recipe must be a mapping at the top level, got {type(raw).__name__}")
    base = raw.pop("extends", None)
    if base is None:
        return raw
    if not isinstance(base, str):
        raise RecipeError(f"{where}: extends: expected a path to another recipe")
    parent = _read_raw((path.parent / base), (*chain, path.resolve()))
    parent.pop("name", None)  # a derived recipe is its own run
    return _deep_merge(parent, raw)


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Any:
    """Read, merge ``extends``, apply ``--set`` overrides, validate. Errors name file and field."""
    path = Path(path)
    where = str(path)
    raw = _read_raw(path)
    raw = apply_overrides(raw, overrides or [])
    recipe = validate_recipe(raw, where)
    if recipe.name is None:
        recipe = recipe.model_copy(update={"name": path.stem})
    return recipe


def dump_recipe(recipe: Any) -> str:
    """The resolved recipe (defaults included) as YAML."""
    raw = recipe.model_dump(mode="json")
    if raw.get("track", 0) is None:  # no trackers: as before `track` existed (resume, ablate skips)
        del raw["track"]
    return yaml.safe_dump(raw, sort_keys=False)
