"""Modules and functions stay small enough to read: no module in kpod/ over 400 lines, no
function or method over 80 (docs/design_and_style.md: small modules along the data path).

Parsed with ast, not imported. A file that grows past a limit fails here with its path and size,
so a split happens when the code grows, not in a later clean-up.
"""

from __future__ import annotations

import ast
from pathlib import Path

import kpod

PACKAGE = Path(kpod.__file__).parent
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80


def sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_no_module_is_over_the_line_limit():
    long = {str(p.relative_to(PACKAGE.parent)): n for p in sources()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


def test_no_function_is_over_the_line_limit():
    long = {}
    for path in sources():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long[f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name}"] = n
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_the_size_check_sees_an_oversized_function(tmp_path):
    # the check itself must be able to fail: a made-up 81-line function is counted as 81
    body = "\n".join(f"    x{i} = {i}" for i in range(80))
    tree = ast.parse(f"def big():\n{body}\n")
    (fn,) = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)]
    assert fn.end_lineno - fn.lineno + 1 == MAX_FUNCTION_LINES + 1
