"""The typed component bases (docs/plugins.md): shared Params/__init__, the documented defaults
of optional features, the registries' base check, the typed WeightingContext."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import ClassVar

import pytest
from pydantic import BaseModel, ConfigDict, ValidationError

from kpod import registry
from kpod.component import Component
from kpod.data.format_base import DataFormat
from kpod.data.records import BadRowError, BadRows, DataError, Record
from kpod.data.source_base import DataSource
from kpod.data.sources import Arith
from kpod.eval.answers import AnswerExtractor, NumericExtractor
from kpod.losses.base import TokenLossBase
from kpod.registry import Registry, RegistryError
from kpod.schedulers.base import CurriculumPlan, ScheduleInputs, SchedulerBase
from kpod.weighting.base import WeightingContext, WeightingStrategy

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "numbers_first"


# --- minimal plugins: only the required methods ---------------------------------------------
class TwoRows(DataSource):
    name: ClassVar[str] = "two_rows"

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        answer: str = "4"

    params: Params

    def load(self, step_mode: str = "default", faults: BadRows | None = None) -> dict[str, list[Record]]:
        faults = faults or BadRows()
        faults.handle(BadRowError("two_rows:2", "missing_field", "no question"))
        return {"train": [Record("t/0", "2 + 2?", "2 + 2 = 4.", ((0, 10),), self.params.answer, {})]}


class Exact(AnswerExtractor):
    name: ClassVar[str] = "exact"

    def extract(self, text: str) -> str | None:
        return text.strip() or None

    def is_correct(self, predicted: str | None, gold: str) -> bool:
        return predicted == gold


class Reverse(SchedulerBase):
    name: ClassVar[str] = "reverse_toy"

    def plan(self, inputs: ScheduleInputs) -> CurriculumPlan:
        return CurriculumPlan(stages=[dict(inputs.n_steps)])


def test_optional_features_have_the_documented_defaults():
    src = TwoRows()
    assert dict(src.report) == {}  # no report: an empty one
    with pytest.raises(DataError, match="two_rows:2"):  # faults is always passed; default policy: error
        src.load("default")
    faults = BadRows("skip")
    assert [r.sample_id for r in src.load("default", faults)["train"]] == ["t/0"] and len(faults.rows) == 1
    ex = Exact()
    assert ex.check_gold("anything at all") is None  # no check_gold: every gold answer is scorable
    assert Reverse.needs == frozenset() and Reverse().plan(ScheduleInputs({"a": 3}, 1, 0)).stages == [{"a": 3}]
    assert dict(WeightingStrategy.report) == {}


def test_component_base_replaces_the_params_boilerplate():
    assert TwoRows().params.answer == "4"  # no params: the defaults
    assert TwoRows(TwoRows.Params(answer="5")).params.answer == "5"
    assert Exact.Params().model_dump() == {}  # no Params: an empty, strict model
    with pytest.raises(ValidationError):
        Exact.Params(tolerance=1)
    assert isinstance(NumericExtractor(), Component) and NumericExtractor().params.tolerance == 1e-4
    a, b = TwoRows(), TwoRows()
    a.report = {"rows": 1}
    assert dict(b.report) == {}  # the default is not shared mutable state


def test_source_without_faults_is_refused_when_defined():
    with pytest.raises(TypeError, match=r"load must take the bad-row policy.*faults"):
        class NoFaults(DataSource):  # noqa: F841
            def load(self, step_mode: str = "default") -> dict[str, list[Record]]:
                return {}


def test_registries_accept_only_subclasses_of_the_kind_base():
    registry.discover()
    bases = {"weighting": WeightingStrategy, "scheduler": SchedulerBase, "loss": TokenLossBase,
             "source": DataSource, "answer_extractor": AnswerExtractor, "format": DataFormat}
    for kind, reg in registry.ALL_REGISTRIES.items():
        for name, cls in reg.items():
            assert issubclass(cls, bases[kind]), (kind, name)

    class Plain:
        name: ClassVar[str] = "plain"

        def extract(self, text: str) -> str | None:
            return text

    reg: Registry[type] = Registry("answer extractor", None, "kpod.eval.answers:AnswerExtractor")
    with pytest.raises(RegistryError, match=r"'plain' .* must be a class derived from kpod\.eval\.answers\.AnswerExtractor"):
        reg.register(Plain)
    reg.register(Exact)
    assert reg.get("exact") is Exact


def test_weighting_context_is_typed_and_the_example_plugin_uses_it(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLE))
    sys.modules.pop("kpod_numbers_first", None)
    from kpod_numbers_first import NumbersFirst

    records = Arith(Arith.Params(n_train=3, n_validation=0, n_test=0, n_ood=0)).load()["train"]
    ctx = WeightingContext(records=records, seed=0)  # a heuristic needs no student
    assert ctx.student is None and ctx.template is None and str(ctx.device) == "cpu"
    plugin = NumbersFirst(NumbersFirst.Params(other=0.1))
    weights = plugin.compute(ctx)
    r = records[0]
    assert set(weights) == {x.sample_id for x in records} and plugin.report == {"records": 3}
    assert {w for s, e, w in weights[r.sample_id] if r.rationale[s:e].strip().isdigit()} == {1.0}
    assert 0.1 in {w for *_, w in weights[r.sample_id]}
    with pytest.raises(ValueError, match=r"weighting \(mask_learning\) reads the student"):
        ctx.student_and_template("mask_learning")
