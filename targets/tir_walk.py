"""Pre-order walk over a TIR statement tree (TVM 0.27's Python API has no stmt visitor)."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

_CHILDREN = ("body", "then_case", "else_case", "block", "init")  # statement-valued fields of TIR nodes


def walk(stmt: Any) -> Iterator[Any]:
    """Every statement under `stmt` (itself first): loops, blocks, allocations, attributes, ..."""
    todo = [stmt]
    while todo:
        node = todo.pop()
        if node is None:
            continue
        yield node
        seq = getattr(node, "seq", None)
        if seq is not None:
            todo.extend(reversed(list(seq)))
        for name in _CHILDREN:
            child = getattr(node, name, None)
            if child is not None and not isinstance(child, (int, float, str)):
                todo.append(child)


__all__ = ["walk"]
