"""Contract of a curriculum scheduler.

A scheduler turns per-sample step counts (and, if it declares ``needs``, step difficulties and
question clusters) into a :class:`CurriculumPlan`: for each stage, how many leading steps
``c`` of each sample are given as input. Stage ``e - 1`` is used by epoch ``e`` (spec §10(i));
epochs past the last stage train on full rationales (``c = 0``). Plans are pure functions of
the inputs, params and seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from pydantic import BaseModel


@dataclass
class ScheduleInputs:
    n_steps: dict[str, int]
    num_epochs: int
    seed: int
    difficulties: dict[str, list[float]] | None = None
    clusters: dict[str, int] | None = None


@dataclass
class CurriculumPlan:
    """``stages[t][sample_id] = c``; epoch ``e`` (1-based) uses ``stages[e - 1]``."""

    stages: list[dict[str, int]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def given_steps(self, epoch: int, sample_id: str) -> int:
        t = epoch - 1
        if t < 0:
            raise ValueError(f"epochs are 1-based, got {epoch}")
        if t >= len(self.stages):
            return 0
        return self.stages[t][sample_id]

    def to_json(self) -> dict[str, Any]:
        return {"stages": self.stages, "info": self.info}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CurriculumPlan:
        return cls(stages=[{k: int(v) for k, v in s.items()} for s in data["stages"]], info=data.get("info", {}))


class Scheduler(Protocol):
    name: ClassVar[str]
    Params: ClassVar[type[BaseModel]]
    needs: ClassVar[frozenset[str]]  # subset of {"difficulty", "clusters"}

    def plan(self, inputs: ScheduleInputs) -> CurriculumPlan: ...
