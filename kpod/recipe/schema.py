"""The Recipe model: static sections plus one ``{name, params}`` union per component kind,
built after :func:`kpod.registry.discover` so that plugins validate like built-ins."""

from __future__ import annotations

from functools import cache
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, create_model

from kpod import registry
from kpod.models.config import StudentConfig
from kpod.recipe.base import RecipeError, RunName, Seed
from kpod.recipe.sections import (
    ClustersConfig,
    DataConfigBase,
    DifficultyConfig,
    EvalConfig,
    TrackConfig,
    TrainConfig,
)
from kpod.registry import Registry, RegistryError
from kpod.teacher_config import TeacherConfig
from kpod.weighting.select import Selection


@cache
def _section_model(kind: str, name: str, params_model: type[BaseModel]) -> type[BaseModel]:
    required = any(f.is_required() for f in params_model.model_fields.values())
    # a weighting section also carries the selection policy shared by every strategy
    extra: dict[str, Any] = {}
    if kind == registry.WEIGHTING.kind:
        extra["select"] = (Selection, Field(default_factory=Selection, description=Selection.__doc__))
    return create_model(  # type: ignore[call-overload,no-any-return]
        f"{kind.title().replace(' ', '')}_{name}",
        __config__=ConfigDict(extra="forbid"),
        name=(Literal[name], ...),  # type: ignore[valid-type]
        # params with required fields must be given (the error then names `<section>.params`)
        params=(params_model, ...) if required else (params_model, Field(default_factory=params_model)),
        **extra,
    )


def _union(reg: Registry[Any]) -> Any:
    members = [_section_model(reg.kind, n, c.Params) for n, c in reg.items()]
    if not members:
        raise RecipeError(f"no {reg.kind} component is registered")
    if len(members) == 1:
        return members[0]
    return Annotated[Union[tuple(members)], Field(discriminator="name")]  # noqa: UP007


# (field path, registry, default section)
COMPONENT_FIELDS: list[tuple[tuple[str, ...], Registry[Any], dict[str, Any]]] = [
    (("data", "source"), registry.DATA_SOURCES, {"name": "arith"}),
    (("data", "format"), registry.DATA_FORMATS, {"name": "plain"}),
    (("weighting",), registry.WEIGHTING, {"name": "uniform"}),
    (("scheduler",), registry.SCHEDULERS, {"name": "none"}),
    (("loss",), registry.LOSSES, {"name": "kpod"}),
    (("eval", "extractor"), registry.ANSWER_EXTRACTORS, {"name": "numeric"}),
]


@cache
def _models(_registered: tuple[tuple[str, ...], ...]) -> type[BaseModel]:
    def union_field(path: tuple[str, ...]) -> tuple[Any, Any]:
        for p, reg, default in COMPONENT_FIELDS:
            if p == path:
                return (_union(reg), Field(default_factory=lambda r=reg, d=default: _default(r, d)))
        raise KeyError(path)

    data_model = create_model(
        "DataConfig", __base__=DataConfigBase, source=union_field(("data", "source")),
        format=union_field(("data", "format")),
    )
    eval_model = create_model(
        "EvalConfigFull", __base__=EvalConfig, extractor=union_field(("eval", "extractor"))
    )
    return create_model(
        "Recipe",
        __config__=ConfigDict(extra="forbid", protected_namespaces=(), allow_inf_nan=False),
        name=(RunName | None, Field(None, description="run name (default: the recipe file's stem)")),
        seed=(Seed, Field(0, description="training seed (model init, data order), 0 ≤ seed < 2³²")),
        data=(data_model, Field(default_factory=lambda: data_model())),
        student=(StudentConfig, Field(default_factory=StudentConfig)),
        weighting=union_field(("weighting",)),
        scheduler=union_field(("scheduler",)),
        difficulty=(DifficultyConfig, Field(default_factory=DifficultyConfig)),
        clusters=(ClustersConfig, Field(default_factory=ClustersConfig)),
        loss=union_field(("loss",)),
        train=(TrainConfig, Field(default_factory=TrainConfig)),
        eval=(eval_model, Field(default_factory=lambda: eval_model())),
        teacher=(TeacherConfig | None, Field(None, description="teacher generation for `kpod teach` (docs/teacher.md)")),
        track=(TrackConfig | None, Field(None, description="experiment trackers: TensorBoard, wandb (docs/tracking.md)")),
    )


def _default(reg: Registry[Any], section: dict[str, Any]) -> Any:
    """The default section, validated by the model of the component it names."""
    return _section_model(reg.kind, section["name"], reg.get(section["name"]).Params).model_validate(section)


def recipe_model() -> type[BaseModel]:
    """The Recipe model for the components registered now (built-ins and plugins)."""
    registry.discover()
    # keyed by the registered names, not their count: a component unregistered and another
    # registered in its place must not get the cached schema
    names = tuple(tuple(r.names()) for _, r, _ in COMPONENT_FIELDS)
    return _models(names)


def build_component(reg: Registry[Any], section: Any) -> Any:
    """Instantiate the registered component for a validated ``{name, params}`` section."""
    try:
        cls = reg.get(section.name)
    except RegistryError as e:
        raise RecipeError(str(e)) from None
    return cls(section.params)
