"""The GGUF container: metadata key/values and tensor infos read from one memory map, without gguf-py.

gguf-py's `GGUFReader` makes numpy views for every part of every field (~150k for a 49k-token vocabulary, seconds);
this reader walks the header with `struct` on the map, reads numeric arrays in one `np.frombuffer` each and string
arrays in one pass, and gives the same plain values as `ReaderField.contents()` (tests/frontend/test_gguf_file.py
checks it against gguf-py, key by key and tensor by tensor). Tensor data stays in the map: `TensorInfo.data` is the
same typed view gguf-py's `ReaderTensor.data` is.
"""
from __future__ import annotations

import math
import mmap
import os
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

__all__ = ["GGUFFile", "GGUFReadError", "TensorInfo", "read_gguf_file"]

MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32

# GGUFValueType ids -> numpy scalar type (BOOL is read as uint8 and compared with 0).
_STRING, _ARRAY, _BOOL = 8, 9, 7
_SCALARS = {
    0: np.uint8, 1: np.int8, 2: np.uint16, 3: np.int16, 4: np.uint32, 5: np.int32, 6: np.float32,
    _BOOL: np.uint8, 10: np.uint64, 11: np.int64, 12: np.float64,
}
_UINT32 = 4
# Tensor types whose data gguf-py exposes as typed elements; every other type is raw uint8 block bytes.
_T = GGMLQuantizationType
_ELEMENT_TYPES = {_T.F16: np.float16, _T.F32: np.float32, _T.F64: np.float64, _T.I8: np.int8, _T.I16: np.int16,
                  _T.I32: np.int32, _T.I64: np.int64}


class GGUFReadError(ValueError):
    """The file is not a GGUF this reader understands, or is truncated or corrupt (the message says where)."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    tensor_type: GGMLQuantizationType
    dims: tuple[int, ...]  # GGUF order (fastest-varying first; gguf-py's `shape`); `data.shape` is numpy order
    n_elements: int
    n_bytes: int
    data_offset: int  # absolute byte offset in the file
    data: np.ndarray = field(repr=False, compare=False)  # view into the map, typed and shaped as gguf-py's


@dataclass
class GGUFFile:
    path: str
    version: int
    byte_order: str  # "<" or ">"
    alignment: int
    data_offset: int  # where the tensor data section starts
    metadata: dict[str, Any]  # key -> plain Python value (lists for arrays), in file order
    tensors: list[TensorInfo]
    data: np.ndarray = field(repr=False)  # the whole file, uint8, memory-mapped read-only


class _Cursor:
    """Reads little- or big-endian GGUF values from a buffer, checking every read against its end."""

    def __init__(self, buf: mmap.mmap, order: str) -> None:
        self.buf, self.order, self.offset, self.size = buf, order, 0, len(buf)
        self._u32, self._u64 = struct.Struct(order + "I"), struct.Struct(order + "Q")

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.offset + n > self.size:
            raise GGUFReadError(f"truncated at byte {self.offset} reading {what} ({n} bytes, file has {self.size})")

    def u32(self, what: str) -> int:
        self.need(4, what)
        (value,) = self._u32.unpack_from(self.buf, self.offset)
        self.offset += 4
        return value

    def u64(self, what: str) -> int:
        self.need(8, what)
        (value,) = self._u64.unpack_from(self.buf, self.offset)
        self.offset += 8
        return value

    def string(self, what: str) -> str:
        length = self.u64(what)
        self.need(length, what)
        start = self.offset
        self.offset += length
        return self._decode(start, length, what)

    def _decode(self, start: int, length: int, what: str) -> str:
        try:
            return self.buf[start:start + length].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise GGUFReadError(f"{what}: string at byte {start} is not UTF-8 ({exc.reason})") from None

    def scalar(self, type_id: int, what: str) -> Any:
        dtype = np.dtype(_SCALARS[type_id]).newbyteorder(self.order)
        self.need(dtype.itemsize, what)
        value = np.frombuffer(self.buf, dtype, 1, self.offset)[0]
        self.offset += dtype.itemsize
        return bool(value) if type_id == _BOOL else value.item()

    def value(self, type_id: int, what: str) -> Any:
        if type_id == _STRING:
            return self.string(what)
        if type_id in _SCALARS:
            return self.scalar(type_id, what)
        if type_id == _ARRAY:
            return self.array(what)
        raise GGUFReadError(f"{what}: unknown value type {type_id}")

    def array(self, what: str) -> list[Any]:
        item_type = self.u32(what)
        count = self.u64(what)
        if item_type == _STRING:
            return self._strings(count, what)
        if item_type in _SCALARS:
            dtype = np.dtype(_SCALARS[item_type]).newbyteorder(self.order)
            self.need(count * dtype.itemsize, what)
            values = np.frombuffer(self.buf, dtype, count, self.offset)
            self.offset += count * dtype.itemsize
            return (values != 0).tolist() if item_type == _BOOL else values.tolist()
        if item_type == _ARRAY:  # gguf-py flattens nested arrays into one list; so does this reader
            return [v for _ in range(count) for v in self.array(what)]
        raise GGUFReadError(f"{what}: unknown array item type {item_type}")

    def _strings(self, count: int, what: str) -> list[str]:
        self.need(count * 8, what)  # every string has at least its length: a corrupt count fails here
        buf, unpack, size = self.buf, self._u64.unpack_from, self.size
        offset, out = self.offset, []
        append = out.append
        for _ in range(count):
            if offset + 8 > size:
                self.offset = offset
                self.need(8, what)
            (length,) = unpack(buf, offset)
            offset += 8
            end = offset + length
            if end > size:
                self.offset = offset
                self.need(length, what)
            try:
                append(buf[offset:end].decode("utf-8"))
            except UnicodeDecodeError as exc:
                raise GGUFReadError(f"{what}: string at byte {offset} is not UTF-8 ({exc.reason})") from None
            offset = end
        self.offset = offset
        return out


def read_gguf_file(path: str | os.PathLike[str]) -> GGUFFile:
    """Parse a GGUF file's header (v2 or v3, either byte order) from a read-only memory map."""
    path = os.fspath(path)
    with open(path, "rb") as handle:
        try:
            buf = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError as exc:  # an empty file cannot be mapped
            raise GGUFReadError(f"cannot map the file ({exc})") from None
    if buf[:4] != MAGIC:
        raise GGUFReadError(f"not a GGUF file (magic {buf[:4]!r}, expected {MAGIC!r})")
    # A version that reads with its low 16 bits zero was written on a host of the other byte order (as gguf-py).
    order = ">" if buf[4:6] == b"\0\0" and len(buf) >= 8 else "<"
    cursor = _Cursor(buf, order)
    cursor.offset = 4
    version = cursor.u32("the version")
    if version not in SUPPORTED_VERSIONS:
        raise GGUFReadError(f"GGUF version {version} is not supported (supported: {SUPPORTED_VERSIONS})")
    tensor_count = cursor.u64("the tensor count")
    kv_count = cursor.u64("the metadata count")
    # gguf-py lists the header counts as fields too; keeping them makes both readers' metadata identical.
    metadata: dict[str, Any] = {"GGUF.version": version, "GGUF.tensor_count": tensor_count, "GGUF.kv_count": kv_count}
    types: dict[str, int] = {}
    for index in range(kv_count):
        key = cursor.string(f"metadata key #{index}")
        if key in metadata:
            raise GGUFReadError(f"metadata key {key!r} appears twice")
        type_id = cursor.u32(f"metadata {key}")
        metadata[key] = cursor.value(type_id, f"metadata {key}")
        types[key] = type_id

    infos = []
    for index in range(tensor_count):
        name = cursor.string(f"tensor info #{index}")
        n_dims = cursor.u32(f"tensor {name}")
        cursor.need(8 * n_dims, f"tensor {name}")
        dims = np.frombuffer(buf, np.dtype(np.uint64).newbyteorder(order), n_dims, cursor.offset)
        cursor.offset += 8 * n_dims
        raw_type = cursor.u32(f"tensor {name}")
        offset = cursor.u64(f"tensor {name}")
        infos.append((name, tuple(int(d) for d in dims), raw_type, offset))

    alignment = DEFAULT_ALIGNMENT
    if "general.alignment" in metadata:
        if types["general.alignment"] != _UINT32:
            raise GGUFReadError("metadata general.alignment: expected a uint32")
        alignment = metadata["general.alignment"]
        if alignment == 0 or alignment & (alignment - 1):
            raise GGUFReadError(f"metadata general.alignment: {alignment} is not a power of two")
    data_offset = cursor.offset + (-cursor.offset % alignment)
    data = np.frombuffer(buf, np.uint8)
    tensors = _tensors(infos, data, data_offset, order)
    return GGUFFile(path, version, order, alignment, data_offset, metadata, tensors, data)


def _tensors(infos: list[tuple[str, tuple[int, ...], int, int]], data: np.ndarray, data_offset: int,
             order: str) -> list[TensorInfo]:
    tensors, seen = [], set()
    for name, dims, raw_type, offset in infos:
        if name in seen:
            raise GGUFReadError(f"tensor {name} appears twice")
        seen.add(name)
        try:
            ggml_type = GGMLQuantizationType(raw_type)
        except ValueError:
            raise GGUFReadError(f"tensor {name}: unknown tensor type {raw_type}") from None
        block_size, type_size = GGML_QUANT_SIZES[ggml_type]
        n_elements = math.prod(dims)
        shape = tuple(reversed(dims))  # numpy order
        if ggml_type not in _ELEMENT_TYPES and (not shape or shape[-1] % block_size):
            raise GGUFReadError(f"tensor {name}: shape {list(dims)} is not whole {ggml_type.name} blocks")
        n_bytes = n_elements * type_size // block_size
        start = data_offset + offset
        if start + n_bytes > data.size:
            raise GGUFReadError(f"tensor {name}: data ends at byte {start + n_bytes}, past the end of the file")
        view = data[start:start + n_bytes]
        if ggml_type in _ELEMENT_TYPES:
            view = view.view(np.dtype(_ELEMENT_TYPES[ggml_type]).newbyteorder(order)).reshape(shape)
        else:
            view = view.reshape(*shape[:-1], shape[-1] // block_size * type_size)
        tensors.append(TensorInfo(name, ggml_type, dims, n_elements, n_bytes, start, view))
    return tensors
