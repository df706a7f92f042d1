"""``none``: no progressive schedule; every epoch trains on full rationales (w.o.-prog)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict

from kpod.registry import SCHEDULERS
from kpod.schedulers.base import CurriculumPlan, ScheduleInputs


@SCHEDULERS("none")
class NoSchedule:
    name: ClassVar[str] = "none"
    needs: ClassVar[frozenset[str]] = frozenset()

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")

    def __init__(self, params: Params | None = None) -> None:
        self.params = params or self.Params()

    def plan(self, inputs: ScheduleInputs) -> CurriculumPlan:
        return CurriculumPlan(stages=[], info={"scheduler": "none"})
