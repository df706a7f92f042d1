"""JSON from files and endpoints kpod does not control, with limits: integer digits and nesting.

``json.loads`` alone turns a 5,000-digit integer into ``ValueError: Exceeds the limit (4300
digits)`` and a 100,000-deep nesting into ``RecursionError``, neither of them a
``JSONDecodeError`` a caller expects. :func:`loads` raises :class:`JsonLimitError` (a
``ValueError``) for both, with the limit in its message, so data rows and teacher replies handle
them as they handle invalid JSON: a counted bad row, a retried or counted reply.
"""

from __future__ import annotations

import json
from typing import Any

MAX_INT_DIGITS = 100  # a gold answer or a count; 10¹⁰⁰ is far past any real one
MAX_DEPTH = 64  # a data row or a chat-completions reply needs fewer than 10


class JsonLimitError(ValueError):
    """Valid JSON beyond a limit (digits, depth)."""


def _int(text: str) -> int:
    digits = len(text.lstrip("-"))
    if digits > MAX_INT_DIGITS:
        raise JsonLimitError(f"an integer of {digits:,} digits (more than {MAX_INT_DIGITS})")
    return int(text)


def _depth_over(obj: Any, limit: int) -> bool:
    """Is ``obj`` nested deeper than ``limit`` (iterative: no recursion on hostile input)."""
    stack = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (dict, list)):
            if depth > limit:
                return True
            stack.extend((v, depth + 1) for v in (node.values() if isinstance(node, dict) else node))
    return False


def check_depth(obj: Any, limit: int = MAX_DEPTH) -> Any:
    """``obj`` unchanged, or :class:`JsonLimitError` when nested deeper than ``limit``."""
    if _depth_over(obj, limit):
        raise JsonLimitError(f"nested more than {limit} levels deep")
    return obj


def loads(text: str | bytes, max_depth: int = MAX_DEPTH) -> Any:
    """``json.loads`` with integers of at most :data:`MAX_INT_DIGITS` digits and at most
    ``max_depth`` levels of nesting; ``json.JSONDecodeError`` for invalid JSON as before."""
    try:
        obj = json.loads(text, parse_int=_int)
    except RecursionError:
        raise JsonLimitError(f"nested more than {max_depth} levels deep") from None
    return check_depth(obj, max_depth)


def raw_decode(decoder: json.JSONDecoder, text: str, pos: int) -> tuple[Any, int]:
    """``decoder.raw_decode`` (a decoder made by :func:`decoder`) with the depth limit."""
    try:
        obj, end = decoder.raw_decode(text, pos)
    except RecursionError:
        raise JsonLimitError(f"nested more than {MAX_DEPTH} levels deep") from None
    return check_depth(obj), end


def decoder() -> json.JSONDecoder:
    """A decoder for :func:`raw_decode` with the integer-digit limit."""
    return json.JSONDecoder(parse_int=_int)
