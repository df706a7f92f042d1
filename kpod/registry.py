"""Generic component registry.

One :class:`Registry` instance exists per component kind (weighting, scheduler, loss,
data source, answer extractor). Components register with a decorator in one of three forms::

    @WEIGHTING                    # bare: name = obj.name or obj.__name__
    class Uniform: ...

    @WEIGHTING()                  # called with no arguments: same as bare
    class Uniform: ...

    @WEIGHTING("uniform")         # explicit name
    class Uniform: ...

A miss raises :class:`RegistryError` listing the registered names and the closest match.
Entry-point discovery (``kpod.<group>``) runs through :func:`discover`, which the recipe layer
calls before it builds the recipe schema, so a plugin's ``Params`` model is validated like a
built-in one. This module imports nothing else from ``kpod``.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, overload

T = TypeVar("T")


class RegistryError(KeyError):
    """Unknown component name or a clash between two registrations."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class Provenance:
    """Where a registered component came from (module, and distribution for plugins)."""

    module: str
    distribution: str | None = None
    version: str | None = None

    def describe(self) -> str:
        if self.distribution:
            return f"{self.distribution} {self.version or ''} ({self.module})".replace("  ", " ")
        return self.module


def _kpod_version() -> str:
    from kpod import __version__

    return __version__


class Registry(Generic[T]):
    """A name → object mapping for one kind of component, filled by decorators."""

    def __init__(self, kind: str, entry_point_group: str | None = None, base: str | None = None) -> None:
        self.kind = kind
        self.entry_point_group = entry_point_group
        # "module:Class" every registered object must subclass; a string, imported on the first
        # registration, so that this module imports nothing else from kpod
        self.base = base
        self._items: dict[str, T] = {}
        self._provenance: dict[str, Provenance] = {}

    # --- registration -------------------------------------------------------------------
    @overload
    def __call__(self, obj: T, /) -> T: ...

    @overload
    def __call__(self, name: str | None = None, /) -> Callable[[T], T]: ...

    def __call__(self, obj_or_name: Any = None, /) -> Any:
        if obj_or_name is None or isinstance(obj_or_name, str):
            explicit = obj_or_name

            def decorator(obj: T) -> T:
                self.register(obj, name=explicit)
                return obj

            return decorator
        self.register(obj_or_name)
        return obj_or_name

    def register(self, obj: T, name: str | None = None, provenance: Provenance | None = None) -> T:
        key = name or getattr(obj, "name", None) or getattr(obj, "__name__", None)
        if not isinstance(key, str) or not key:
            raise RegistryError(f"cannot infer a {self.kind} name for {obj!r}; pass one explicitly")
        module = getattr(obj, "__module__", "?")
        prov = provenance or Provenance(module, *(("kpod", _kpod_version()) if module.startswith("kpod.") else (None, None)))
        if key in self._items and self._items[key] is not obj:
            raise RegistryError(
                f"two {self.kind} components are named {key!r}: "
                f"{self._provenance[key].describe()} and {prov.describe()}"
            )
        self._check_base(key, obj, prov)
        self._items[key] = obj
        self._provenance[key] = prov
        return obj

    def _check_base(self, key: str, obj: Any, prov: Provenance) -> None:
        if self.base is None:
            return
        module, _, attr = self.base.partition(":")
        base = getattr(importlib.import_module(module), attr)
        if not (isinstance(obj, type) and issubclass(obj, base)):
            raise RegistryError(
                f"{self.kind} component {key!r} from {prov.describe()} must be a class derived from "
                f"{module}.{attr} (see docs/plugins.md)"
            )

    def unregister(self, name: str) -> None:
        """Remove ``name`` (a test that registers a component for one case takes it out again)."""
        self.get(name)
        del self._items[name]
        del self._provenance[name]

    # --- lookup ---------------------------------------------------------------------------
    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise RegistryError(self.miss_message(name)) from None

    def get_or_none(self, name: str) -> T | None:
        return self._items.get(name)

    def miss_message(self, name: str) -> str:
        names = sorted(self._items)
        close = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return f"unknown {self.kind} {name!r}; registered: {', '.join(names) or '(none)'}{hint}"

    def provenance(self, name: str) -> Provenance:
        self.get(name)
        return self._provenance[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def items(self) -> Iterator[tuple[str, T]]:
        yield from sorted(self._items.items())

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"


# One instance per component kind. Built-ins register on import of their package
# (see BUILTIN_MODULES); plugins through the entry-point group.
# Each kind requires its base class (kpod/component.py lists them).
WEIGHTING: Registry[Any] = Registry("weighting", "kpod.weighting", "kpod.weighting.base:WeightingStrategy")
SCHEDULERS: Registry[Any] = Registry("scheduler", "kpod.schedulers", "kpod.schedulers.base:SchedulerBase")
LOSSES: Registry[Any] = Registry("loss", "kpod.losses", "kpod.losses.base:TokenLossBase")
DATA_SOURCES: Registry[Any] = Registry("data source", "kpod.data_sources", "kpod.data.source_base:DataSource")
ANSWER_EXTRACTORS: Registry[Any] = Registry("answer extractor", "kpod.answer_extractors", "kpod.eval.answers:AnswerExtractor")
DATA_FORMATS: Registry[Any] = Registry("data format", "kpod.data_formats", "kpod.data.format_base:DataFormat")

ALL_REGISTRIES: dict[str, Registry[Any]] = {
    "weighting": WEIGHTING,
    "scheduler": SCHEDULERS,
    "loss": LOSSES,
    "source": DATA_SOURCES,
    "answer_extractor": ANSWER_EXTRACTORS,
    "format": DATA_FORMATS,
}

BUILTIN_MODULES = (
    "kpod.weighting",
    "kpod.schedulers",
    "kpod.losses",
    "kpod.data.sources",
    "kpod.data.benchmarks",
    "kpod.eval.answers",
    "kpod.data.format_base",
    "kpod.data.prompted_formats",
    "kpod.data.rationale_sets",
)

_discovered = False


def _load_entry_points(reg: Registry[Any]) -> None:
    """Register every object advertised under ``reg.entry_point_group`` by an installed package."""
    from importlib.metadata import entry_points

    if reg.entry_point_group is None:
        return
    for ep in sorted(entry_points(group=reg.entry_point_group), key=lambda e: e.name):
        dist = getattr(ep, "dist", None)
        dist_name = dist.metadata["Name"] if dist is not None else "?"
        version = dist.version if dist is not None else None
        try:
            obj = ep.load()
        except Exception as e:  # re-raised with the distribution named; nothing is swallowed
            raise RegistryError(
                f"plugin {ep.name!r} ({reg.entry_point_group} = {ep.value}) from distribution "
                f"{dist_name} {version or ''} failed to import: {e.__class__.__name__}: {e}"
            ) from e
        if reg.get_or_none(ep.name) is obj:
            continue  # a package that also registers itself on import
        reg.register(obj, name=ep.name, provenance=Provenance(ep.value.split(":")[0], dist_name, version))


def discover(entry_points: bool = True) -> None:
    """Import the built-in components, then the entry-point plugins, once, before recipes are
    validated (so a plugin's ``Params`` joins the recipe schema)."""
    global _discovered
    if _discovered:
        return
    for mod in BUILTIN_MODULES:
        importlib.import_module(mod)
    if entry_points:
        for reg in ALL_REGISTRIES.values():
            _load_entry_points(reg)
    _discovered = True
