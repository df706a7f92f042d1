"""The static type of a validated recipe, for code that reads one.

The Recipe model itself is built at run time (:func:`kpod.recipe.recipe_model`): its component
sections (``data.source``, ``weighting``, ``scheduler``, ``loss``, ``eval.extractor``) are unions
over whatever the registries hold once plugins are discovered, so no static class can name them.
These protocols describe what every such model has; the static sections are the classes of
:mod:`kpod.recipe` themselves, and ``data`` and ``eval`` are their static classes
(:class:`~kpod.recipe.DataConfigBase`, :class:`~kpod.recipe.EvalConfig`) plus the component
sections that the run-time model adds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from kpod.recipe import (
    ClustersConfig,
    DataConfigBase,
    DifficultyConfig,
    EvalConfig,
    StudentConfig,
    TrackConfig,
    TrainConfig,
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


if TYPE_CHECKING:
    # Each section's options are declared once, in its static class (kpod/recipe/sections.py); the
    # model validated at run time (kpod.recipe.schema) is that class plus its component sections,
    # which is what these subclasses say to a type checker. A new option is one field there.

    class DataSection(DataConfigBase):
        source: ComponentSection
        format: ComponentSection

    class EvalSection(EvalConfig):
        extractor: ComponentSection

else:  # at run time the names stand for the static classes (the validated models derive from them)
    DataSection, EvalSection = DataConfigBase, EvalConfig


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
