"""``none``: no progressive schedule; every epoch trains on full rationales (w.o.-prog)."""

from __future__ import annotations

from typing import ClassVar

from kpod.registry import SCHEDULERS
from kpod.schedulers.base import CurriculumPlan, ScheduleInputs, SchedulerBase


@SCHEDULERS("none")
class NoSchedule(SchedulerBase):
    name: ClassVar[str] = "none"

    def plan(self, inputs: ScheduleInputs) -> CurriculumPlan:
        return CurriculumPlan(stages=[], info={"scheduler": "none"})
