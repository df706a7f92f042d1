"""kpod.registry.Registry: decorator forms, default names, loud misses, clashes, discovery."""

from __future__ import annotations

from typing import ClassVar

import pytest

from kpod import registry
from kpod.registry import Provenance, Registry, RegistryError


# --- the three decorator forms -------------------------------------------------------------
def test_bare_decorator_uses_name_attribute_and_returns_object():
    reg: Registry[type] = Registry("loss")

    @reg
    class MyLoss:
        name: ClassVar[str] = "my_loss"

    assert reg.get("my_loss") is MyLoss
    assert "MyLoss" not in reg  # the `name` attribute wins over __name__
    assert isinstance(MyLoss, type)  # the decorator hands the class back unchanged


def test_called_decorator_without_arguments_is_the_same_as_bare():
    reg: Registry[type] = Registry("loss")

    @reg()
    class Other:
        name: ClassVar[str] = "other"

    assert reg.get("other") is Other
    assert reg.names() == ["other"]


def test_explicit_name_overrides_name_attribute():
    reg: Registry[type] = Registry("scheduler")

    @reg("explicit")
    class Sched:
        name: ClassVar[str] = "ignored"

    assert reg.get("explicit") is Sched
    assert "ignored" not in reg
    assert reg.names() == ["explicit"]


def test_name_defaults_to_dunder_name_without_name_attribute():
    reg: Registry[object] = Registry("extractor")

    @reg
    def parse_answer(text: str) -> str:
        return text

    @reg()
    class Plain:
        pass

    assert reg.get("parse_answer") is parse_answer
    assert reg.get("Plain") is Plain
    assert parse_answer("x") == "x"  # still the original function
    assert len(reg) == 2


def test_registering_the_same_object_twice_is_idempotent():
    reg: Registry[type] = Registry("loss")

    class A:
        name: ClassVar[str] = "a"

    reg.register(A)
    reg.register(A)
    assert reg.names() == ["a"]


# --- misses -------------------------------------------------------------------------------
def test_miss_lists_registered_names_and_suggests_closest():
    reg: Registry[object] = Registry("scheduler")
    for n in ("kpod_knapsack", "linear", "none"):
        reg.register(object(), name=n)
    with pytest.raises(RegistryError) as info:
        reg.get("knapsak")
    msg = str(info.value)
    assert "'knapsak'" in msg
    assert "scheduler" in msg
    for n in ("kpod_knapsack", "linear", "none"):
        assert n in msg
    assert "did you mean 'kpod_knapsack'" in msg
    # str() is the plain message, not KeyError's quoted repr
    assert not msg.startswith(("'", '"'))
    assert isinstance(info.value, KeyError)


def test_miss_without_close_match_has_no_suggestion():
    reg: Registry[object] = Registry("loss")
    reg.register(object(), name="kpod")
    with pytest.raises(RegistryError) as info:
        reg.get("zzzzzzzz")
    msg = str(info.value)
    assert "kpod" in msg
    assert "did you mean" not in msg


def test_miss_on_empty_registry_says_none_registered():
    with pytest.raises(RegistryError, match=r"\(none\)"):
        Registry("loss").get("kpod")


# --- clashes ------------------------------------------------------------------------------
def test_two_objects_under_one_name_raise_naming_both_sources():
    reg: Registry[type] = Registry("weighting")

    class First:
        name: ClassVar[str] = "mask_learning"

    class Second:
        name: ClassVar[str] = "mask_learning"

    reg.register(First, provenance=Provenance(module="kpod.weighting.mask"))
    with pytest.raises(RegistryError) as info:
        reg.register(
            Second,
            provenance=Provenance(
                module="thirdparty.weights", distribution="kpod-extra", version="2.1"
            ),
        )
    msg = str(info.value)
    assert "'mask_learning'" in msg
    assert "kpod.weighting.mask" in msg
    assert "kpod-extra" in msg and "2.1" in msg and "thirdparty.weights" in msg
    # the first registration is kept
    assert reg.get("mask_learning") is First


def test_decorator_clash_names_both_modules():
    reg: Registry[type] = Registry("loss")

    class A:
        name: ClassVar[str] = "dup"

    class B:
        name: ClassVar[str] = "dup"

    A.__module__ = "pkg_one.losses"
    B.__module__ = "pkg_two.losses"
    reg(A)
    with pytest.raises(RegistryError) as info:
        reg(B)
    assert "pkg_one.losses" in str(info.value)
    assert "pkg_two.losses" in str(info.value)


# --- built-in discovery -------------------------------------------------------------------
def test_discover_registers_builtins():
    registry.discover()
    expected = {
        registry.WEIGHTING: {"uniform"},
        registry.SCHEDULERS: {"none"},
        registry.LOSSES: {"kpod", "std_cot"},
        registry.DATA_SOURCES: {"arith", "local"},
        registry.ANSWER_EXTRACTORS: {"numeric", "choice"},
    }
    for reg, names in expected.items():
        assert names <= set(reg.names()), (reg.kind, reg.names())
        for n in names:
            obj = reg.get(n)
            # every built-in component ships a Params model the recipe layer validates with
            assert hasattr(obj, "Params"), (reg.kind, n)
            assert getattr(obj, "name", n) == n


def test_discover_is_idempotent():
    registry.discover()
    sizes = [len(r) for r in registry.ALL_REGISTRIES.values()]
    registry.discover()
    assert [len(r) for r in registry.ALL_REGISTRIES.values()] == sizes
