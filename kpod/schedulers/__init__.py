"""Curriculum schedulers (registry kind ``scheduler``)."""

from kpod.schedulers import curricula as curricula  # noqa: F401  (registers spl, acl/adaptive_cl, icl)
from kpod.schedulers import kpod_knapsack as kpod_knapsack  # noqa: F401  (registers)
from kpod.schedulers import none as none  # noqa: F401  (registers)
from kpod.schedulers import simple as simple  # noqa: F401  (registers linear, anti_curriculum)
from kpod.schedulers.base import (
    AdaptiveScheduler,
    CurriculumPlan,
    EpochStats,
    ScheduleInputs,
    Scheduler,
    SchedulerBase,
)

__all__ = ["AdaptiveScheduler", "CurriculumPlan", "EpochStats", "ScheduleInputs", "Scheduler", "SchedulerBase"]
