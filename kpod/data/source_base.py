"""Contract of a data source (registry kind ``source``): ``load(step_mode, faults)`` returns
``{split: [Record, ...]}``.

``faults`` is the recipe's ``data.on_bad_row`` policy: a source hands every malformed row to
``faults.handle(BadRowError(where, reason, message))``, which raises under ``error`` and records
the skip under ``skip`` (a source whose rows cannot be malformed, like ``arith``, ignores it).
Every source takes ``faults``: a subclass whose ``load`` lacks the parameter is refused when the
class is defined, with a message saying what to add.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from kpod.component import Component
from kpod.data.records import BadRows, Record


class DataSource(Component):
    """Base of every data source (the ``DATA_SOURCES`` registry accepts only subclasses)."""

    # counts per split (files, rows kept and dropped) for summary.json; assigned by load()
    report: Mapping[str, Any] = MappingProxyType({})

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "faults" not in inspect.signature(cls.load).parameters:
            raise TypeError(
                f"{cls.__module__}.{cls.__qualname__}.load must take the bad-row policy: "
                "def load(self, step_mode: str = 'default', faults: BadRows | None = None) "
                "(see docs/plugins.md, data sources)"
            )

    def load(self, step_mode: str = "default", faults: BadRows | None = None) -> dict[str, list[Record]]:
        """Records per split; ``step_mode`` is ``data.step_splitter.mode`` (pass it to
        :func:`kpod.data.steps.split_steps`); malformed rows go to ``faults`` (None: an error)."""
        raise NotImplementedError(f"{type(self).__name__}.load")
