"""An ONNX graph read for pattern matching, and its initializers read lazily.

The file is parsed with `onnx.load(path, load_external_data=False)`: tensors stored inside the .onnx file are in the
parsed proto (a graph with inline data is under 2 GB by protobuf's limit), tensors in external data files stay on
disk. `TensorStore` memory-maps an external file on the first read of one of its tensors and returns a view of the
bytes, so importing an 8B export reads nothing but the graph; every external tensor's location, offset and length
are checked against the files' sizes up front (a truncated data file fails at import, naming the file).
"""
from __future__ import annotations

import math
import mmap
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from ...errors import ModelFormatError

# ONNX element types ember converts, as the names passes/materialize.py knows them; anything else is reported by
# its ONNX name (INT8, UINT4...) and refused there
DTYPES = {TensorProto.FLOAT: ("F32", np.float32), TensorProto.FLOAT16: ("F16", np.float16),
          TensorProto.DOUBLE: ("F64", np.float64), TensorProto.BFLOAT16: ("BF16", None)}

# ops that pass a value through unchanged as far as the patterns care (a dtype cast, an identity)
PASS_THROUGH = frozenset({"Cast", "CastLike", "Identity"})
# ops whose outputs do not depend on their inputs' values (only on shapes): never followed as data flow
SHAPE_ONLY = frozenset({"Shape", "Size", "ConstantOfShape", "EyeLike"})
# ops whose first input is the data and the others are shapes, indices or axes
DATA_FIRST = frozenset({"Reshape", "Expand", "Slice", "Unsqueeze", "Squeeze", "Tile", "Pad", "Gather", "Split",
                        "Transpose", "Flatten", "Softmax", "ReduceMean", "ReduceSum", "Trilu"})


def label(node: onnx.NodeProto) -> str:
    return f"node {node.name or node.output[0]!r} ({node.op_type})"


class Graph:
    """Producers, users and constants of one ONNX graph; `path` names the file in errors."""

    def __init__(self, model: onnx.ModelProto, path: Path) -> None:
        self.path = path
        self.model = model
        graph = model.graph
        self.nodes = list(graph.node)
        self.inits: dict[str, TensorProto] = {t.name: t for t in graph.initializer}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.users: dict[str, list[tuple[onnx.NodeProto, int]]] = defaultdict(list)
        for node in self.nodes:
            for out in node.output:
                self.producer[out] = node
            for index, name in enumerate(node.input):
                if name:
                    self.users[name].append((node, index))
        self.inputs = [i.name for i in graph.input if i.name not in self.inits]
        self.outputs = [o.name for o in graph.output]
        self._consts: dict[str, np.ndarray | None] = {}

    def error(self, what: str) -> ModelFormatError:
        return ModelFormatError(f"{self.path}: {what}")

    def canon(self, value: str) -> str:
        """The value behind casts and identities."""
        while value in self.producer and self.producer[value].op_type in PASS_THROUGH:
            value = self.producer[value].input[0]
        return value

    def uses(self, value: str) -> list[tuple[onnx.NodeProto, int]]:
        """The nodes reading `value`, also through casts and identities (which are not listed themselves)."""
        found, stack = [], [value]
        while stack:
            for node, index in self.users.get(stack.pop(), []):
                if node.op_type in PASS_THROUGH:
                    stack.append(node.output[0])
                else:
                    found.append((node, index))
        return found

    def const(self, value: str, limit: int = 1 << 16) -> np.ndarray | None:
        """A small constant's values (an inline initializer or a Constant node, behind casts); None otherwise."""
        value = self.canon(value)
        if value in self._consts:
            return self._consts[value]
        array = None
        if value in self.inits:
            tensor = self.inits[value]
            if tensor.data_location != TensorProto.EXTERNAL and math.prod(tensor.dims) <= limit:
                array = _inline_array(tensor)
        elif value in self.producer and self.producer[value].op_type == "Constant":
            array = _constant_node(self.producer[value])
        self._consts[value] = array
        return array

    def scalar(self, value: str) -> float | None:
        array = self.const(value, limit=1)
        return None if array is None or array.size != 1 else float(array.reshape(()))

    def weight(self, value: str) -> tuple[str, bool] | None:
        """(initializer, transposed) when `value` is an initializer, behind casts and 2-D transposes."""
        transposed = False
        while value in self.producer:
            node = self.producer[value]
            if node.op_type in PASS_THROUGH:
                value = node.input[0]
            elif node.op_type == "Transpose" and _perm(node) in ([1, 0], None):
                value, transposed = node.input[0], not transposed
            else:
                return None
        return (value, transposed) if value in self.inits else None

    def data_users(self, value: str) -> list[tuple[onnx.NodeProto, int]]:
        """Users that read `value` as data (not as a shape, index or axis)."""
        return [(n, i) for n, i in self.uses(value)
                if n.op_type not in SHAPE_ONLY and not (n.op_type in DATA_FIRST and i != 0)
                and not (n.op_type == "Where" and i == 0)]


def _perm(node: onnx.NodeProto) -> list[int] | None:
    for attr in node.attribute:
        if attr.name == "perm":
            return list(attr.ints)
    return None


def attribute(node: onnx.NodeProto, name: str, default=None):
    for attr in node.attribute:
        if attr.name == name:
            return onnx.helper.get_attribute_value(attr)
    return default


def _inline_array(tensor: TensorProto) -> np.ndarray:
    if tensor.data_type == TensorProto.BFLOAT16 and tensor.raw_data:
        import ml_dtypes

        return np.frombuffer(tensor.raw_data, dtype=ml_dtypes.bfloat16).reshape(tuple(tensor.dims))
    return numpy_helper.to_array(tensor)


def _constant_node(node: onnx.NodeProto) -> np.ndarray | None:
    for attr in node.attribute:
        if attr.name == "value":
            return _inline_array(attr.t)
        if attr.name in ("value_float", "value_int"):
            return np.array(onnx.helper.get_attribute_value(attr))
        if attr.name in ("value_floats", "value_ints"):
            return np.array(list(onnx.helper.get_attribute_value(attr)))
    return None


@dataclass(frozen=True)
class Stored:
    """Where one initializer's bytes are: inline (in the parsed proto) or in an external file."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # "F32", "F16", "BF16", "F64", or the ONNX type name
    file: Path | None = None
    offset: int = 0
    length: int = 0


class TensorStore:
    """The initializers of one graph; external files are memory-mapped on the first read."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.folder = graph.path.parent
        self._maps: dict[Path, mmap.mmap] = {}
        self.stored: dict[str, Stored] = {}
        sizes: dict[Path, int] = {}
        for name, tensor in graph.inits.items():
            shape = tuple(int(d) for d in tensor.dims)
            dtype = DTYPES.get(tensor.data_type, (TensorProto.DataType.Name(tensor.data_type),))[0]
            if tensor.data_location != TensorProto.EXTERNAL:
                self.stored[name] = Stored(name, shape, dtype)
                continue
            info = {e.key: e.value for e in tensor.external_data}
            file = self._file(name, info.get("location", ""))
            if file not in sizes:
                if not file.is_file():
                    raise graph.error(f"initializer {name!r}: external data file {file} is missing")
                sizes[file] = file.stat().st_size
            offset = int(info.get("offset", 0) or 0)
            itemsize = np.dtype(_numpy_dtype(tensor.data_type) or np.uint8).itemsize
            length = int(info.get("length", 0) or 0) or math.prod(shape) * itemsize
            if offset + length > sizes[file]:
                raise ModelFormatError(f"{file}: truncated external data: initializer {name!r} needs bytes "
                                       f"{offset}..{offset + length}, the file has {sizes[file]}")
            self.stored[name] = Stored(name, shape, dtype, file, offset, length)

    def _file(self, name: str, location: str) -> Path:
        if not location or os.path.isabs(location):
            raise self.graph.error(f"initializer {name!r}: external data location {location!r} is not a path "
                                   "relative to the model's folder")
        file = (self.folder / location).resolve()
        if self.folder.resolve() not in file.parents:
            raise self.graph.error(f"initializer {name!r}: external data location {location!r} is outside the "
                                   "model's folder")
        return file

    def array(self, name: str) -> np.ndarray:
        """The initializer's values in its stored dtype: a view of the memory map for external data."""
        tensor, stored = self.graph.inits[name], self.stored[name]
        dtype = _numpy_dtype(tensor.data_type)
        if stored.file is None:
            return _inline_array(tensor)
        if dtype is None:
            raise self.graph.error(f"initializer {name!r} is stored as {stored.dtype}, which ember cannot convert")
        if stored.length != math.prod(stored.shape) * np.dtype(dtype).itemsize:
            raise ModelFormatError(f"{stored.file}: initializer {name!r} has {stored.length} bytes, its shape "
                                   f"{list(stored.shape)} of {stored.dtype} needs "
                                   f"{math.prod(stored.shape) * np.dtype(dtype).itemsize}")
        if stored.file not in self._maps:
            with open(stored.file, "rb") as handle:
                self._maps[stored.file] = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        buffer = self._maps[stored.file]
        if stored.offset + stored.length > len(buffer):  # shrunk since the import checked it
            raise ModelFormatError(f"{stored.file}: truncated external data: initializer {name!r} needs bytes "
                                   f"{stored.offset}..{stored.offset + stored.length}, the file has {len(buffer)}")
        count = math.prod(stored.shape)
        return np.frombuffer(buffer, dtype=dtype, count=count, offset=stored.offset).reshape(stored.shape)


def _numpy_dtype(data_type: int):
    if data_type == TensorProto.BFLOAT16:
        import ml_dtypes

        return ml_dtypes.bfloat16
    entry = DTYPES.get(data_type)
    return entry[1] if entry else None


def external_files(path: Path) -> list[Path]:
    """The external data files a graph's initializers name (for the build fingerprint), from the graph alone."""
    model = onnx.load(str(path), load_external_data=False)
    names = set()
    for tensor in model.graph.initializer:
        if tensor.data_location == TensorProto.EXTERNAL:
            location = {e.key: e.value for e in tensor.external_data}.get("location")
            if location:
                names.add(location)
    return [path.parent / name for name in sorted(names) if (path.parent / name).is_file()]
