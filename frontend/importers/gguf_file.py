"""A GGUF file's header read in one pass: metadata as plain Python values, tensor records with memory-mapped data.

`gguf.GGUFReader` builds a numpy view per metadata element: ~4 s for the ~150k strings of a 49k-token vocabulary
(SmolLM2). This reader decodes the header from one bytes object with `struct` (~0.1 s) and gives the tensors the
same layout as GGUFReader (`data`: float arrays for F16/F32/F64/I*, uint8 rows of blocks otherwise; `shape`: GGUF
dimension order), views into one read-only memory map. Little-endian GGUF v2/v3 (what llama.cpp writes).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

DEFAULT_ALIGNMENT = 32
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_NUMPY = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "?", 10: "<u8", 11: "<i8", 12: "<f8"}
_STRING, _ARRAY = 8, 9
_PLAIN = {
    GGMLQuantizationType.F16: np.float16, GGMLQuantizationType.F32: np.float32, GGMLQuantizationType.F64: np.float64,
    GGMLQuantizationType.I8: np.int8, GGMLQuantizationType.I16: np.int16, GGMLQuantizationType.I32: np.int32,
    GGMLQuantizationType.I64: np.int64,
}  # fmt: skip


@dataclass(frozen=True)
class GGUFTensorRecord:
    name: str
    tensor_type: GGMLQuantizationType
    shape: np.ndarray  # uint64 dimensions, GGUF order (innermost first)
    n_elements: int
    n_bytes: int
    data_offset: int
    data: np.ndarray  # read-only view into the memory map


class GGUFFile:
    """Raises ValueError (bad structure), UnicodeDecodeError or OSError; the caller names the file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.data = np.memmap(self.path, dtype=np.uint8, mode="r")
        self._buf = memoryview(self.data)
        self._pos = 0
        magic, version = self._take("<4sI")
        if magic != b"GGUF":
            raise ValueError(f"not a GGUF file (magic {magic!r})")
        if version not in (2, 3):
            raise ValueError(f"GGUF version {version} is not supported (2 and 3 are; big-endian files are not)")
        n_tensors, n_fields = self._take("<QQ")
        # GGUFReader's pseudo-fields first, as it lists them
        self.fields: dict[str, Any] = {"GGUF.version": version, "GGUF.tensor_count": n_tensors,
                                       "GGUF.kv_count": n_fields}
        for _ in range(n_fields):
            key = self._string()
            (kind,) = self._take("<I")
            self.fields[key] = self._value(kind)
        infos = [self._tensor_info() for _ in range(n_tensors)]
        alignment = self.fields.get("general.alignment", DEFAULT_ALIGNMENT)
        if not isinstance(alignment, int) or alignment <= 0:
            raise ValueError(f"general.alignment {alignment!r} is not a positive integer")
        start = -(-self._pos // alignment) * alignment
        self.tensors = [self._tensor(start, *info) for info in infos]
        names = [t.name for t in self.tensors]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicated tensor name {next(n for n in names if names.count(n) > 1)}")

    # -- header ---------------------------------------------------------------------------------------------------
    def _take(self, fmt: str) -> tuple[Any, ...]:
        size = struct.calcsize(fmt)
        if self._pos + size > len(self._buf):
            raise ValueError(f"header ends past the end of the file (byte {self._pos + size})")
        out = struct.unpack_from(fmt, self._buf, self._pos)
        self._pos += size
        return out

    def _string(self) -> str:
        (length,) = self._take("<Q")
        end = self._pos + length
        if end > len(self._buf):
            raise ValueError(f"a string of {length} bytes runs past the end of the file")
        text = bytes(self._buf[self._pos : end]).decode("utf-8")
        self._pos = end
        return text

    def _value(self, kind: int) -> Any:
        if kind in _SCALARS:
            return self._take("<" + _SCALARS[kind])[0]
        if kind == _STRING:
            return self._string()
        if kind != _ARRAY:
            raise ValueError(f"unknown metadata value type {kind}")
        item, count = self._take("<IQ")
        if item in _NUMPY:  # one numpy read for the whole array
            dtype = np.dtype(_NUMPY[item])
            end = self._pos + count * dtype.itemsize
            if end > len(self._buf):
                raise ValueError(f"an array of {count} values runs past the end of the file")
            values = np.frombuffer(self._buf, dtype=dtype, count=count, offset=self._pos).tolist()
            self._pos = end
            return values
        if item == _STRING:
            return self._strings(count)
        return [self._value(item) for _ in range(count)]

    def _strings(self, count: int) -> list[str]:
        buf, pos, out = self._buf, self._pos, []
        unpack, size = struct.Struct("<Q").unpack_from, len(buf)
        for _ in range(count):
            if pos + 8 > size:
                raise ValueError("a string array runs past the end of the file")
            (length,) = unpack(buf, pos)
            pos += 8
            if pos + length > size:
                raise ValueError(f"a string of {length} bytes runs past the end of the file")
            out.append(bytes(buf[pos : pos + length]).decode("utf-8"))
            pos += length
        self._pos = pos
        return out

    def _tensor_info(self) -> tuple[str, list[int], int, int]:
        name = self._string()
        (n_dims,) = self._take("<I")
        if n_dims > 8:
            raise ValueError(f"tensor {name}: {n_dims} dimensions")
        dims = list(self._take(f"<{n_dims}Q"))
        kind, offset = self._take("<IQ")
        return name, dims, kind, offset

    def _tensor(self, start: int, name: str, dims: list[int], kind: int, offset: int) -> GGUFTensorRecord:
        ggml_type = GGMLQuantizationType(kind)
        n_elements = int(np.prod(dims, dtype=np.int64)) if dims else 1
        block, type_size = GGML_QUANT_SIZES[ggml_type]
        n_bytes = n_elements * type_size // block
        data_offset = start + offset
        np_dims = tuple(reversed(dims))
        if data_offset + n_bytes > len(self.data):
            data = self.data[0:0]  # truncated: the caller reports where the tensor ends
        elif ggml_type in _PLAIN:
            data = self.data[data_offset : data_offset + n_bytes].view(_PLAIN[ggml_type]).reshape(np_dims)
        else:
            if np_dims and np_dims[-1] % block:
                raise ValueError(f"tensor {name}: row size {np_dims[-1]} is not a multiple of {block}")
            byte_dims = (*np_dims[:-1], np_dims[-1] // block * type_size) if np_dims else (n_bytes,)
            data = self.data[data_offset : data_offset + n_bytes].reshape(byte_dims)
        return GGUFTensorRecord(name, ggml_type, np.array(dims, dtype=np.uint64), n_elements, n_bytes, data_offset,
                                np.asarray(data))  # fmt: skip
