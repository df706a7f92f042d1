"""The static type of a validated recipe, for code that reads one.

The Recipe model itself is built at run time (:func:`kpod.recipe.recipe_model`): its component
sections (``data.source``, ``weighting``, ``scheduler``, ``loss``, ``eval.extractor``) are unions
over whatever the registries hold once plugins are discovered, so no static class can name them.
These protocols describe what every such model has; the static sections are the classes of
:mod:`kpod.recipe` themselves.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol

from kpod.recipe import (
    ClustersConfig,
    DifficultyConfig,
    StepSplitterConfig,
    StudentConfig,
    TemplateConfig,
    TrackConfig,
    TrainConfig,
    VllmEvalConfig,
)
from kpod.teacher_config import TeacherConfig
from kpod.weighting.select import Selection


class ComponentSection(Protocol):
    """A validated ``{name, params}`` section; ``params`` is the component's own Params model."""

    name: str
    params: Any


class WeightingSection(ComponentSection, Protocol):
    """The ``weighting`` section: ``{name, params}`` plus the selection policy (``select``)."""

    select: Selection


class DataSection(Protocol):
    source: ComponentSection
    format: ComponentSection
    template: TemplateConfig
    step_splitter: StepSplitterConfig
    max_length: int
    on_too_long: Literal["error", "skip"]
    max_unknown_fraction: float
    on_bad_row: Literal["error", "skip"]


class EvalSection(Protocol):
    extractor: ComponentSection
    splits: list[str]
    batch_size: int
    max_new_tokens: int
    limit: int | None
    select_on: str | None
    select_every_steps: int | None
    select_limit: int | None
    backend: Literal["kpod", "hf", "vllm"]
    stop_at_answer: bool
    vllm: VllmEvalConfig


class Recipe(Protocol):
    """A recipe as :func:`kpod.recipe.load_recipe` returns it (``name`` is set by then)."""

    name: str
    seed: int
    data: DataSection
    student: StudentConfig
    weighting: WeightingSection
    scheduler: ComponentSection
    difficulty: DifficultyConfig
    clusters: ClustersConfig
    loss: ComponentSection
    train: TrainConfig
    eval: EvalSection
    teacher: TeacherConfig | None
    track: TrackConfig | None
