"""Bounded YAML for recipes and ``--set`` values: a hostile file is an error, never a hang.

``yaml.safe_load`` runs no code, but it trusts the input's size and shape: a 361-byte
"billion laughs" file (anchors of anchors) expands to 10⁹ nodes in the first walk over it, a
5,000-deep nesting overflows the recursive composer, and ``extends: /dev/zero`` reads forever.
Here a recipe is read only from a regular file of at most :data:`MAX_BYTES`, composed with the
SafeLoader's constructors under a depth cap (:data:`MAX_DEPTH`), and refused when its tree with
every alias expanded would exceed :data:`MAX_NODES` nodes (counted on the composed graph, each
shared node once, so the count itself is cheap).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import yaml

from kpod.recipe.base import RecipeError

MAX_BYTES = 1 << 20  # 1 MiB; the largest shipped recipe is a few KB
MAX_DEPTH = 64  # nested mappings/lists; a recipe needs fewer than 10
MAX_NODES = 100_000  # scalars + collections with aliases expanded


class _LimitExceeded(yaml.YAMLError):
    def __init__(self, problem: str, mark: Any) -> None:
        super().__init__(problem)
        self.problem = problem
        self.problem_mark = mark


class _BoundedLoader(yaml.SafeLoader):
    """The SafeLoader (same constructors, no tags that run code) with a nesting-depth cap."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _LimitExceeded(f"nested more than {MAX_DEPTH} levels deep", self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _expanded_size(node: yaml.Node, sizes: dict[int, int]) -> int:
    """Nodes in ``node``'s tree with aliases expanded (memoised per node: linear in the graph)."""
    if id(node) in sizes:
        return sizes[id(node)]
    total = 1
    if isinstance(node, yaml.SequenceNode):
        total += sum(_expanded_size(child, sizes) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        total += sum(_expanded_size(k, sizes) + _expanded_size(v, sizes) for k, v in node.value)
    sizes[id(node)] = total
    return total


def load_yaml(text: str) -> Any:
    """``text`` as the SafeLoader reads it; ``yaml.YAMLError`` (with ``problem_mark`` where
    known) for invalid YAML and for nesting deeper than :data:`MAX_DEPTH` or more than
    :data:`MAX_NODES` nodes after alias expansion."""
    loader = _BoundedLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, {}) > MAX_NODES:
            raise _LimitExceeded(f"more than {MAX_NODES:,} values once aliases are expanded "
                                 "(an alias bomb?)", node.start_mark)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def yaml_error_text(e: yaml.YAMLError) -> tuple[str, str]:
    """(``:LINE:COLUMN`` or "", the problem) of a YAML error, for one-line messages."""
    mark = getattr(e, "problem_mark", None)
    loc = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
    problem = getattr(e, "problem", None) or (str(e).splitlines() or [type(e).__name__])[0]
    return loc, problem


def read_yaml_file(path: Path) -> Any:
    """A recipe file's YAML: a regular file of at most :data:`MAX_BYTES`, UTF-8, bounded YAML.
    Every problem is a :class:`RecipeError` naming ``path``."""
    where = str(path)
    if where in ("", ".") or path.name == "":
        raise RecipeError(f"{where!r}: not a recipe file (an empty path)")
    try:
        with open(path, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            if not stat.S_ISREG(mode):
                kind = "a directory" if stat.S_ISDIR(mode) else "not a regular file"
                raise RecipeError(f"{where}: {kind}; a recipe is a YAML file")
            data = f.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise RecipeError(f"{where}: no such recipe file") from None
    except IsADirectoryError:
        raise RecipeError(f"{where}: a directory; a recipe is a YAML file") from None
    except OSError as e:
        raise RecipeError(f"{where}: cannot read ({e.strerror})") from None
    if len(data) > MAX_BYTES:
        raise RecipeError(f"{where}: larger than {MAX_BYTES // 1024} KiB; a recipe is a small YAML file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RecipeError(f"{where}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    try:
        return load_yaml(text)
    except yaml.YAMLError as e:
        loc, problem = yaml_error_text(e)
        raise RecipeError(f"{where}{loc}: invalid YAML: {problem}") from None
