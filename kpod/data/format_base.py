"""Contract of a data format (registry kind ``format``, recipe field ``data.format``): how a
method turns the source's records into its training and evaluation examples.

Most methods train on the source's records as they are (``plain``). The baselines do not:
distilling step-by-step makes two tasks of each question, MCC-KD keeps several diverse rationales
of one question, Specialized KD mixes four prompt formats, SCOTT adds counterfactual examples
(docs/baselines.md). A format does that once, after loading and checking, before any phase sees
the data, so weighting, difficulty, plans, training and evaluation all see the same records.

Rules a format keeps:
- a derived record's ``sample_id`` is derived from its source record's (``<id>#label``,
  ``<id>#r3``), never from its position; ids stay unique across splits;
- every record derived from one question shares that question's ``question_id`` (the source's
  sample_id), so grouped batches (``train.group_by_question``) and per-question statistics find
  them;
- what it adds or drops is counted in :attr:`report` (summary.json ``data_report.format``).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, ClassVar

from kpod.component import Component
from kpod.data.records import Record
from kpod.registry import DATA_FORMATS


class DataFormat(Component):
    """Base of every data format (the ``DATA_FORMATS`` registry accepts only subclasses)."""

    # counts for summary.json (records in and out per split, what was dropped and why)
    report: Mapping[str, Any] = MappingProxyType({})

    def expand(self, splits: dict[str, list[Record]], seed: int) -> dict[str, list[Record]]:
        """The method's records per split, from the source's (checked) records."""
        raise NotImplementedError(f"{type(self).__name__}.expand")

    def loss_problem(self, loss: Any) -> str | None:
        """Why the recipe's loss (the built component) cannot train this format's records (None: it can)."""
        return None


@DATA_FORMATS("plain")
class Plain(DataFormat):
    """The source's records as they are: one question, one rationale, one example."""

    name: ClassVar[str] = "plain"

    def expand(self, splits: dict[str, list[Record]], seed: int) -> dict[str, list[Record]]:
        self.report = {"name": self.name, "records": {s: len(v) for s, v in splits.items()}}
        return splits
