"""What every registered component shares: a ``name``, a strict ``Params`` model, ``__init__(params)``.

Each kind puts its own contract on top of :class:`Component` (docs/plugins.md):
:class:`kpod.weighting.base.WeightingStrategy`, :class:`kpod.schedulers.base.SchedulerBase`,
:class:`kpod.losses.base.TokenLossBase`, :class:`kpod.data.source_base.DataSource`,
:class:`kpod.eval.answers.AnswerExtractor`. The registries accept only subclasses of these, so
the engine can call every optional feature (``report``, ``check_gold``, ``needs``) directly.
This module imports nothing else from ``kpod``.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict


class NoParams(BaseModel):
    """The ``Params`` of a component without parameters: only ``{}`` validates."""

    model_config = ConfigDict(extra="forbid")


class Component:
    """A registered component. Subclasses set ``name`` and, if they take parameters, a nested
    ``Params`` model (reject unknown keys: ``model_config = ConfigDict(extra="forbid")``)."""

    name: ClassVar[str]
    Params: ClassVar[type[BaseModel]] = NoParams

    def __init__(self, params: BaseModel | None = None) -> None:
        # the engine passes the recipe's validated section; None (tests, library use): defaults
        self.params = params if params is not None else self.Params()
