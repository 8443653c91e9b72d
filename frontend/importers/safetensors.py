"""Hugging Face model folders: config.json + safetensors (single file or sharded with an index).

Tensors are memory-mapped and yielded one at a time in their stored dtype (f32, f16, bf16 via ml_dtypes).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy so safetensors can map bf16 tensors)
import numpy as np
from safetensors import safe_open

from ...errors import ModelFormatError

INDEX_FILE = "model.safetensors.index.json"


class SafetensorsFolder:
    """name -> tensor over all the shards of a folder; nothing is read until a tensor is asked for."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self._where: dict[str, Path] = {}
        index = self.folder / INDEX_FILE
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as err:
                raise ModelFormatError(f"{index}: malformed index ({err})") from None
            for name, shard in weight_map.items():
                self._where[name] = self.folder / shard
        else:
            files = sorted(self.folder.glob("*.safetensors"))
            if not files:
                bins = sorted(self.folder.glob("*.bin")) + sorted(self.folder.glob("*.pt")) + \
                    sorted(self.folder.glob("*.pth"))
                if bins:
                    raise ModelFormatError(
                        f"{bins[0]}: PyTorch pickle checkpoints are refused (loading pickle runs code); convert "
                        "the folder to safetensors first, e.g. with transformers: "
                        "model.save_pretrained(dir, safe_serialization=True)")
                raise ModelFormatError(f"{self.folder}: no *.safetensors weights found")
            for path in files:
                for name in self._keys(path):
                    self._where[name] = path
        self._handles: dict[Path, object] = {}

    def _keys(self, path: Path) -> list[str]:
        return list(self._open(path).keys())

    def _open(self, path: Path):
        if path not in getattr(self, "_handles", {}):
            if not path.is_file():
                raise ModelFormatError(f"{path}: shard listed in {INDEX_FILE} is missing")
            try:
                handle = safe_open(str(path), framework="numpy")
            except Exception as err:  # safetensors raises its own error types
                raise ModelFormatError(f"{path}: not a readable safetensors file ({err})") from None
            if not hasattr(self, "_handles"):
                self._handles = {}
            self._handles[path] = handle
        return self._handles[path]

    def names(self) -> list[str]:
        return list(self._where)

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def file_of(self, name: str) -> Path:
        return self._where[name]

    def get(self, name: str) -> np.ndarray:
        if name not in self._where:
            raise ModelFormatError(f"{self.folder}: tensor {name!r} is missing from the safetensors files")
        return self._open(self._where[name]).get_tensor(name)

    def header(self, name: str) -> tuple[tuple[int, ...], str]:
        """(shape, safetensors dtype such as "BF16") from the file's header; reads no tensor data."""
        if name not in self._where:
            raise ModelFormatError(f"{self.folder}: tensor {name!r} is missing from the safetensors files")
        piece = self._open(self._where[name]).get_slice(name)
        return tuple(int(d) for d in piece.get_shape()), str(piece.get_dtype())

    def items(self) -> Iterator[tuple[str, np.ndarray]]:
        for name in self._where:
            yield name, self.get(name)
