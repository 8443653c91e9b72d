"""TVMScript parsing without its slow stack walks (shared by the GPU targets).

The TVMScript parser calls inspect.stack() once per prim_func; for every `<frozen importlib...>` frame inspect
scans all of sys.modules, which makes parsing TVM's tensor intrinsics take 30-45 s on the 2-core build box (minutes
under pytest, which imports far more modules). `cheap_inspect_stack` gives the parser the same frames and source
lines without that scan.
"""
from __future__ import annotations

import contextlib
import inspect
import linecache
import sys
import types
from collections.abc import Iterator


def _frame_infos(frame: types.FrameType | None, context: int = 1) -> list[inspect.FrameInfo]:
    infos = []
    while frame is not None:
        name, lineno = frame.f_code.co_filename, frame.f_lineno
        line = linecache.getline(name, lineno) if context > 0 and not name.startswith("<") else ""
        infos.append(inspect.FrameInfo(frame, name, lineno, frame.f_code.co_name, [line] if line else None,
                                       0 if line else None))
        frame = frame.f_back
    return infos


@contextlib.contextmanager
def cheap_inspect_stack() -> Iterator[None]:
    saved = inspect.stack, inspect.getouterframes
    inspect.stack = lambda context=1: _frame_infos(sys._getframe(1), context)
    inspect.getouterframes = _frame_infos
    try:
        yield
    finally:
        inspect.stack, inspect.getouterframes = saved


def preload_tensor_intrinsics() -> None:
    """Import `tvm.s_tir.tensor_intrin` (248 TVMScript intrinsics, parsed on first dlight Matmul use).

    Imported plainly it costs ~30-45 s on the 2-core build box; under `cheap_inspect_stack` ~5 s,
    with identical registered intrinsics (checked: desc/impl scripts of all 124 match).
    """
    if "tvm.s_tir.tensor_intrin" in sys.modules:
        return
    with cheap_inspect_stack():
        import tvm.s_tir.tensor_intrin  # noqa: F401


__all__ = ["cheap_inspect_stack", "preload_tensor_intrinsics"]
