"""Curriculum schedulers (registry kind ``scheduler``)."""

from kpod.schedulers import none as none  # noqa: F401  (registers)
from kpod.schedulers.base import CurriculumPlan, ScheduleInputs, Scheduler

__all__ = ["CurriculumPlan", "ScheduleInputs", "Scheduler"]
