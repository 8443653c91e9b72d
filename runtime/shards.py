"""Weight shards (safetensors) read by memory-mapping: a tensor is a numpy view of the mapped file, so loading
copies each weight once, from the page cache straight into TVM's tensor, and never parses more than the header.

Format: an 8-byte little-endian header length, a JSON header {name: {dtype, shape, data_offsets}}, the data.
Everything is checked against the file's size before a view is made: a damaged shard is a one-line ArtifactError.
"""
from __future__ import annotations

import json
import math
import mmap
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ArtifactError

MAX_HEADER = 100 << 20  # the safetensors library's own limit

# safetensors dtype -> (ember/TVM dtype name, numpy dtype of the view; None = needs ml_dtypes)
DTYPES: dict[str, tuple[str, str | None]] = {
    "F64": ("float64", "float64"), "F32": ("float32", "float32"), "F16": ("float16", "float16"),
    "BF16": ("bfloat16", "uint16"),  # TVM's copy takes bfloat16 bits as uint16, no ml_dtypes needed
    "F8_E4M3": ("float8_e4m3fn", None), "F8_E5M2": ("float8_e5m2", None),
    "I64": ("int64", "int64"), "I32": ("int32", "int32"), "I16": ("int16", "int16"), "I8": ("int8", "int8"),
    "U64": ("uint64", "uint64"), "U32": ("uint32", "uint32"), "U16": ("uint16", "uint16"), "U8": ("uint8", "uint8"),
    "BOOL": ("bool", "bool"),
}  # fmt: skip


def shown(name: str) -> str:
    """A tensor name as error lines print it: as is, or quoted when it holds a newline or other control."""
    return name if name.isprintable() else repr(name)


class Shard:
    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        try:
            with open(self.path, "rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                head = handle.read(8)
                length = int.from_bytes(head, "little") if len(head) == 8 else -1
                if not 2 <= length <= min(size - 8, MAX_HEADER):
                    raise self._unreadable(f"header length {length} does not fit a {size}-byte file")
                header = json.loads(handle.read(length))
                self._map = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        except RecursionError:
            raise self._unreadable("its JSON header is nested too deeply") from None
        except (OSError, ValueError) as err:  # ValueError: JSONDecodeError, UnicodeDecodeError
            raise self._unreadable(str(err).splitlines()[0] if str(err) else type(err).__name__) from None
        if not isinstance(header, dict):
            raise self._unreadable("the header is not a JSON object")
        self._start = 8 + length
        self._data_size = size - self._start
        self._entries: dict[str, Any] = {k: v for k, v in header.items() if k != "__metadata__"}

    def _unreadable(self, why: str) -> ArtifactError:
        return ArtifactError(f"{self.path}: not a readable safetensors file ({why})")

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def info(self, name: str) -> tuple[str, list[int]]:
        """(dtype, shape) of a tensor, as ember names dtypes."""
        entry = self._entries[name]
        code = entry.get("dtype") if isinstance(entry, dict) else None
        shape = entry.get("shape") if isinstance(entry, dict) else None
        if (not isinstance(code, str) or code not in DTYPES or not isinstance(shape, list)
                or not all(type(d) is int and d >= 0 for d in shape)):
            raise ArtifactError(f"{self.path}: tensor {shown(name)} has a malformed header entry {entry!r}")
        return DTYPES[code][0], list(shape)

    def array(self, name: str) -> np.ndarray:
        """A read-only numpy view of the mapped bytes (bfloat16 as uint16 bits)."""
        dtype_name, shape = self.info(name)
        view_dtype = DTYPES[self._entries[name]["dtype"]][1]
        if view_dtype is None:
            from .tvm_import import ensure_ml_dtypes

            dtype = np.dtype(getattr(ensure_ml_dtypes(), dtype_name))
        else:
            dtype = np.dtype(view_dtype)
        offsets = self._entries[name].get("data_offsets")
        count = math.prod(shape)  # exact: numpy's int64 product wraps around on lying shapes
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)
                and 0 <= offsets[0] <= offsets[1] <= self._data_size
                and offsets[1] - offsets[0] == count * dtype.itemsize):  # fmt: skip
            raise ArtifactError(
                f"{self.path}: tensor {shown(name)} has data offsets {offsets} that do not fit its shape {shape} "
                f"{dtype_name} in {self._data_size} bytes of data"
            )
        if count == 0:
            return np.empty(shape, dtype)
        flat = np.frombuffer(self._map, dtype=dtype, count=count, offset=self._start + offsets[0])
        return flat.reshape(shape)


# ember/TVM dtype name -> (safetensors code, bytes per element)
_CODES = {name: (code, np.dtype(view or "uint8").itemsize if view else 1) for code, (name, view) in DTYPES.items()}


def tensor_nbytes(shape: list[int], dtype: str) -> int:
    if dtype not in _CODES:
        raise ArtifactError(f"dtype {dtype} cannot be stored in a safetensors shard")
    return math.prod(int(d) for d in shape) * _CODES[dtype][1]


class ShardWriter:
    """Writes one safetensors file a tensor at a time: the header is made from the planned (name, shape, dtype)
    list first, then each tensor's bytes are appended as it comes, so no more than one tensor is ever held.
    The layout is the format's: an 8-byte header length, the JSON header padded with spaces to 8 bytes, the
    data in header order with no gaps (tensors in the order they are planned)."""

    def __init__(self, path: str | os.PathLike, planned: list[tuple[str, list[int], str]]) -> None:
        self.path = Path(path)
        header: dict[str, Any] = {}
        offset = 0
        self._expected: list[tuple[str, int]] = []
        for name, shape, dtype in planned:
            if dtype not in _CODES:
                raise ArtifactError(f"{self.path}: tensor {name} has dtype {dtype}, which safetensors cannot hold")
            nbytes = tensor_nbytes(shape, dtype)
            code = _CODES[dtype][0]
            header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            self._expected.append((name, nbytes))
            offset += nbytes
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)
        self._handle = open(self.path, "wb")
        self._handle.write(len(text).to_bytes(8, "little") + text)
        self._next = 0

    def write(self, name: str, array: np.ndarray) -> None:
        expected_name, nbytes = self._expected[self._next]
        if name != expected_name or array.nbytes != nbytes:
            raise ArtifactError(f"{self.path}: tensor {name} ({array.nbytes} bytes) is not the planned "
                                f"{expected_name} ({nbytes} bytes)")
        self._handle.write(np.ascontiguousarray(array).reshape(-1).view(np.uint8))
        self._next += 1

    def close(self) -> None:
        missing = [name for name, _ in self._expected[self._next:]]
        self._handle.close()
        if missing:
            raise ArtifactError(f"{self.path}: closed before tensors {missing[:3]} were written")

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self._handle.close()
