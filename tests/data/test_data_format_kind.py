"""The ``data.format`` component kind: applied once after loading and checking, counted in the
report, and its derived ids are checked for uniqueness like the source's."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import pytest

from kpod import registry
from kpod.data.format_base import DataFormat
from kpod.data.load import load_data
from kpod.data.records import DataError, Record
from tests.helpers import tiny_recipe


class TwoCopies(DataFormat):
    """Each training record twice, as ``<id>#a`` and ``<id>#b`` (or, broken, twice as ``<id>#a``)."""

    name: ClassVar[str] = "two_copies_test"

    def __init__(self, params=None, broken: bool = False) -> None:
        super().__init__(params)
        self.broken = broken

    def expand(self, splits: dict[str, list[Record]], seed: int) -> dict[str, list[Record]]:
        tags = ("a", "a") if self.broken else ("a", "b")
        train = [dataclasses.replace(r, sample_id=f"{r.sample_id}#{t}") for r in splits["train"] for t in tags]
        self.report = {"train_in": len(splits["train"]), "train_out": len(train)}
        return {**splits, "train": train}


@pytest.fixture
def two_copies():
    registry.discover()
    registry.DATA_FORMATS.register(TwoCopies)
    yield
    registry.DATA_FORMATS._items.pop("two_copies_test")  # noqa: SLF001 - test cleanup


def test_plain_is_the_default_and_keeps_records():
    recipe = tiny_recipe()
    assert recipe.data.format.name == "plain"
    report: dict = {}
    splits = load_data(recipe, report)
    assert report["format"]["records"]["train"] == len(splits["train"]) == 96


def test_a_format_expands_the_checked_records_and_reports(two_copies):
    recipe = tiny_recipe(data={"format": {"name": "two_copies_test"}})
    report: dict = {}
    splits = load_data(recipe, report)
    ids = [r.sample_id for r in splits["train"]]
    assert len(ids) == 192 and ids[:2] == ["arith/train/00000#a", "arith/train/00000#b"]
    assert report["format"] == {"train_in": 96, "train_out": 192}
    assert len(splits["validation"]) == 8  # untouched splits pass through


def test_duplicate_ids_from_a_format_are_an_error(two_copies, monkeypatch):
    monkeypatch.setattr(TwoCopies, "__init__", lambda self, params=None: (DataFormat.__init__(self, params),
                                                                         setattr(self, "broken", True))[0])
    with pytest.raises(DataError, match=r"arith/train/00000#a"):
        load_data(tiny_recipe(data={"format": {"name": "two_copies_test"}}))
