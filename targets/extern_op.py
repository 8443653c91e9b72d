"""`te.extern` with buffers whose element-offset variables have distinct names.

te.extern names every buffer's offset variable `elem_offset`; TVM later makes the names unique in the order of a
set (object addresses), so two builds of one model gave different kernel sources and libraries. Here input i's
offset is `elem_offset_in{i}` and output j's `elem_offset_out{j}`: nothing is left to rename.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from tvm import te, tirx


def extern(shape: Sequence[Any] | Sequence[Sequence[Any]], inputs: Sequence[te.Tensor], body: Callable[..., Any],
           dtype: str | Sequence[str], name: str) -> Any:
    """te.extern(shape, inputs, body, dtype=dtype, name=name), one output or several (shape a list of shapes)."""
    several = bool(shape) and isinstance(shape[0], (list, tuple))
    shapes = list(shape) if several else [list(shape)]
    dtypes = [dtype] * len(shapes) if isinstance(dtype, str) else list(dtype)
    in_buffers = [tirx.decl_buffer(t.shape, t.dtype, t.op.name, elem_offset=tirx.Var(f"elem_offset_in{i}", "int32"))
                  for i, t in enumerate(inputs)]
    out_buffers = [tirx.decl_buffer(s, d, name, elem_offset=tirx.Var(f"elem_offset_out{j}", "int32"))
                   for j, (s, d) in enumerate(zip(shapes, dtypes))]
    return te.extern(shapes if several else shapes[0], list(inputs), body, dtype=dtypes if several else dtypes[0],
                     name=name, in_buffers=in_buffers, out_buffers=out_buffers)


__all__ = ["extern"]
