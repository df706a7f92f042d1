"""Recipes: YAML → pydantic, strict at every level.

* a bounded SafeLoader only (``safe_yaml``: regular files, size, depth, alias expansion);
  ``${VAR}`` in strings expands from the environment.
* Unknown keys are rejected at every level (``extra="forbid"``).
* Each component section is ``{name: ..., params: {...}}``; ``name`` picks the ``Params`` model
  of the registered component (a discriminated union built after :func:`kpod.registry.discover`,
  so plugins validate like built-ins).
* Errors are :class:`RecipeError` and name the file and the dotted field path.
* ``--set a.b.c=value`` overrides are parsed as YAML scalars and typed by the schema.

The package: ``base`` (RecipeError, Strict) → ``student`` and ``sections`` (static sections) →
``schema`` (component unions, ``recipe_model``, ``build_component``) → ``loading`` (files,
overrides, validation). Import any of these names from ``kpod.recipe``.
"""

from kpod.models.config import (
    LoraConfig,
    PretrainConfig,
    StudentConfig,
    TinyModelConfig,
    TokenizerConfig,
)
from kpod.recipe.base import RecipeError, Strict
from kpod.recipe.loading import (
    apply_overrides,
    dump_recipe,
    format_validation_error,
    load_recipe,
    parse_override,
    validate_recipe,
)
from kpod.recipe.schema import COMPONENT_FIELDS, build_component, recipe_model
from kpod.recipe.sections import (
    ClustersConfig,
    DataConfigBase,
    DifficultyConfig,
    EvalConfig,
    StepSplitterConfig,
    TemplateConfig,
    TrackConfig,
    TrainConfig,
    VllmEvalConfig,
)

__all__ = [
    "COMPONENT_FIELDS",
    "ClustersConfig",
    "DataConfigBase",
    "DifficultyConfig",
    "EvalConfig",
    "LoraConfig",
    "PretrainConfig",
    "RecipeError",
    "Strict",
    "StepSplitterConfig",
    "StudentConfig",
    "TemplateConfig",
    "TinyModelConfig",
    "TokenizerConfig",
    "TrackConfig",
    "TrainConfig",
    "VllmEvalConfig",
    "apply_overrides",
    "build_component",
    "dump_recipe",
    "format_validation_error",
    "load_recipe",
    "parse_override",
    "recipe_model",
    "validate_recipe",
]
