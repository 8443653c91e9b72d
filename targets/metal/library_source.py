"""The MSL kernels inside a metal library file (model.dylib), read back without TVM or a Mac.

`__tvm_ffi__library_bin` holds the packed module tree; the metal module stores each kernel as a length-prefixed
string (uint64 little-endian length, then the text), every one starting with `#include <metal_stdlib>`. The
kernel's name is read from its `kernel void <name>(` line. Used by tests and tools to check a shipped artifact
exactly as the Mac will receive it.
"""
from __future__ import annotations

import re
import struct
from pathlib import Path

from . import MetalBuildError

_UNIT_START = b"#include <metal_stdlib>"
_KERNEL = re.compile(r"\bkernel\s+void\s+(\w+)\s*\(")
_U64 = struct.Struct("<Q")


def library_blob(path: str | Path) -> bytes:
    """The bytes of `__tvm_ffi__library_bin` (without its 8-byte size header)."""
    import lief

    lief.logging.disable()
    try:
        fat = lief.MachO.parse(str(path))
    finally:
        lief.logging.enable()
    binary = fat.at(0) if fat is not None else None
    symbol = next((s for s in binary.symbols if s.name == "___tvm_ffi__library_bin"), None) if binary else None
    if symbol is None:
        raise MetalBuildError(f"{path}: no ___tvm_ffi__library_bin symbol (not a TVM library for macOS)")
    size = _U64.unpack(bytes(binary.get_content_from_virtual_address(symbol.value, 8)))[0]
    return bytes(binary.get_content_from_virtual_address(symbol.value + 8, size))


def kernels_in_blob(blob: bytes) -> dict[str, str]:
    found: dict[str, str] = {}
    pos = 0
    while (start := blob.find(_UNIT_START, pos)) >= 8:
        length = _U64.unpack_from(blob, start - 8)[0]
        if length > len(blob) - start:
            raise MetalBuildError(f"malformed kernel record at byte {start} of the library blob")
        text = blob[start:start + length].decode()
        name = _KERNEL.search(text)
        if name is None:
            raise MetalBuildError(f"a kernel record at byte {start} of the library blob has no `kernel void`")
        found[name.group(1)] = text
        pos = start + length
    return found


def msl_from_dylib(path: str | Path) -> dict[str, str]:
    """{kernel name: its MSL translation unit} of a metal library file."""
    return kernels_in_blob(library_blob(path))


__all__ = ["kernels_in_blob", "library_blob", "msl_from_dylib"]
