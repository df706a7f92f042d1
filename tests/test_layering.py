"""Imports only go down the layers, no module imports another module's private names, and no
modules import each other in a cycle.

Every module of the package is parsed (ast, not imported: lazy imports inside functions count
too) and its ``kpod`` imports are checked against :data:`LAYERS`, lowest first. A module may
import from its own layer and the layers below it, never from a layer above. A module that no
layer claims fails the test: a new module gets a place in the order when it is added.
"""

from __future__ import annotations

import ast
from pathlib import Path

import kpod

PACKAGE = Path(kpod.__file__).parent

# Lowest first. A module belongs to the layer of the longest prefix that names it
# ("kpod.eval" claims kpod.eval and kpod.eval.generate, not kpod.evaluation).
LAYERS: list[tuple[str, list[str]]] = [
    ("base", ["kpod", "kpod.registry", "kpod.component", "kpod.runs", "kpod.timing", "kpod.cache", "kpod.progress",
              "kpod.tracking"]),
    ("data", ["kpod.data", "kpod.eval.answers"]),
    ("models", ["kpod.models", "kpod.teacher_config"]),
    ("components", ["kpod.weighting", "kpod.difficulty", "kpod.clusters", "kpod.schedulers", "kpod.losses",
                    "kpod.eval", "kpod.fluency"]),
    ("recipe", ["kpod.recipe", "kpod.recipe_types"]),
    # reading a recipe's data (builds the source and extractor components from the recipe)
    ("data loading", ["kpod.data.load"]),
    ("teach", ["kpod.teach"]),
    ("engine", ["kpod.engine"]),
    ("commands", ["kpod.reports", "kpod.compare", "kpod.ablate", "kpod.launch", "kpod.components", "kpod.cli"]),
]

# Private names a module may still take from another, each with the reason; empty now.
# Each entry must still occur, so the list can only shrink.
KNOWN_PRIVATE: set[tuple[str, str, str]] = set()


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int | None:
    best: tuple[int, int] | None = None  # (prefix length, layer index)
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            # "kpod" names the package's own __init__ only: every other module needs its place
            covers = module == p or (p != "kpod" and module.startswith(p + "."))
            if covers and (best is None or len(p) > best[0]):
                best = (len(p), i)
    return None if best is None else best[1]


def modules() -> dict[str, ast.Module]:
    return {module_name(p): ast.parse(p.read_text(encoding="utf-8"), str(p)) for p in sorted(PACKAGE.rglob("*.py"))}


def is_module(name: str) -> bool:
    base = PACKAGE.parent.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def imports(tree: ast.Module, module: str) -> list[tuple[int, str, list[str]]]:
    """``(line, imported module, names)`` for every kpod import (relative ones resolved).

    Imports under ``if TYPE_CHECKING:`` are skipped: they name a type for annotations only (e.g.
    ``kpod.runs`` annotating a summary's ``Recipe``) and never run, so no layer depends on them."""
    type_only = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
        for stmt in node.body
        for n in ast.walk(stmt)
    }
    out = []
    is_package = PACKAGE.parent.joinpath(*module.split("."), "__init__.py").is_file()
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name, []) for a in node.names if a.name.split(".")[0] == "kpod"]
        elif isinstance(node, ast.ImportFrom):
            target = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, target] if target else base)
            if target.split(".")[0] == "kpod":
                out.append((node.lineno, target, [a.name for a in node.names]))
    return out


def test_every_module_has_a_layer():
    unplaced = sorted(m for m in modules() if layer_of(m) is None)
    assert not unplaced, f"modules with no layer (add them to LAYERS in {__file__}): {unplaced}"


def test_imports_only_go_down():
    bad: set[str] = set()
    for module, tree in modules().items():
        own = layer_of(module)
        if own is None:
            continue
        for line, target, names in imports(tree, module):
            # ``from kpod.x import y``: y may be a submodule with its own layer
            targets = [f"{target}.{n}" if is_module(f"{target}.{n}") else target for n in names] or [target]
            for t in targets:
                theirs = layer_of(t)
                if theirs is not None and theirs > own:
                    bad.add(f"{module}:{line} ({LAYERS[own][0]}) imports {t} ({LAYERS[theirs][0]})")
    assert not bad, "imports that go up the layers:\n" + "\n".join(sorted(bad))


def import_graph(trees: dict[str, ast.Module]) -> dict[str, set[str]]:
    """``module → the kpod modules it imports`` (lazy imports included, ``TYPE_CHECKING`` ones not;
    ``from pkg import sub`` counts as importing ``pkg.sub``)."""
    graph: dict[str, set[str]] = {m: set() for m in trees}
    for module, tree in trees.items():
        for _, target, names in imports(tree, module):
            subs = [f"{target}.{n}" for n in names if is_module(f"{target}.{n}")]
            graph[module].update(t for t in (subs or [target]) if t in trees and t != module)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted: every
    module in one imports every other, directly or through the rest."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def test_no_import_cycles():
    """A cycle (even through imports inside functions) means no module of it can be read, tested
    or moved without the others: the shared piece belongs in a module below them."""
    found = cycles(import_graph(modules()))
    assert not found, "modules that import each other (move the shared piece down):\n" + "\n".join(
        " <-> ".join(c) for c in found
    )


def private_uses(tree: ast.Module, module: str) -> set[tuple[str, str, str]]:
    """``(module, other module, name)`` for each ``_name`` taken from another kpod module: by
    ``from other import _name`` or as an attribute ``alias._name`` of an imported module."""
    found: set[tuple[str, str, str]] = set()
    aliases: dict[str, str] = {}  # local name bound to a kpod module → that module
    for _, target, names in imports(tree, module):
        for n in names:
            if is_module(f"{target}.{n}"):
                aliases[n] = f"{target}.{n}"
            elif n.startswith("_") and not n.startswith("__") and target != module:
                found.add((module, target, n))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "kpod" and a.asname:
                    aliases[a.asname] = a.name
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
            and aliases[node.value.id] != module
        ):
            found.add((module, aliases[node.value.id], node.attr))
    return found


def test_no_private_names_across_modules():
    found = set().union(*(private_uses(tree, m) for m, tree in modules().items()))
    new = sorted(found - KNOWN_PRIVATE)
    assert not new, "private names used across modules (make them public or move them):\n" + "\n".join(
        f"{m} uses {other}.{name}" for m, other, name in new
    )
    gone = sorted(KNOWN_PRIVATE - found)
    assert not gone, f"fixed, so delete from KNOWN_PRIVATE: {gone}"


def test_the_checks_catch_what_they_are_for():
    """The checkers themselves: an upward import and a private import in a parsed snippet."""
    tree = ast.parse("from kpod.engine.train import Trainer\nfrom kpod.weighting import cache\ncache._x\n"
                     "from kpod.data.records import _file_line\n")
    found = imports(tree, "kpod.data.collate")
    assert (1, "kpod.engine.train", ["Trainer"]) in found
    assert layer_of("kpod.engine.train") > layer_of("kpod.data.collate")
    assert layer_of("kpod.recipe") > layer_of("kpod.weighting.mask_learning")
    assert layer_of("kpod.engine.train") > layer_of("kpod.teach.run")
    assert layer_of("kpod.brand_new_module") is None  # a new top-level module must be placed
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    assert private_uses(tree, "kpod.data.collate") == {
        ("kpod.data.collate", "kpod.weighting.cache", "_x"),
        ("kpod.data.collate", "kpod.data.records", "_file_line"),
    }
