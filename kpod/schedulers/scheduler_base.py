"""Base class of every scheduler (the ``SCHEDULERS`` registry accepts only subclasses).

The contract itself — :class:`~kpod.schedulers.base.Scheduler`, ``ScheduleInputs``,
``CurriculumPlan`` — lives in :mod:`kpod.schedulers.base`; this class adds the shared
``Params``/``__init__`` and the default ``needs`` (nothing beyond the step counts).
"""

from __future__ import annotations

from typing import ClassVar

from kpod.component import Component
from kpod.schedulers.base import CurriculumPlan, ScheduleInputs


class SchedulerBase(Component):
    # subset of {"difficulty", "clusters"}: what the engine computes for ``plan``'s inputs
    needs: ClassVar[frozenset[str]] = frozenset()

    def plan(self, inputs: ScheduleInputs) -> CurriculumPlan:
        raise NotImplementedError(f"{type(self).__name__}.plan")
