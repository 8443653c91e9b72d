"""GGUF import: metadata -> transformers-style config, tensors -> HF names and layout.

`open_gguf(path)` reads the header with gguf_file.py (one memory map, zero copy; metadata as plain Python values),
checks it against the tensors and returns a `GGUFModel`. Tensors come out lazily as `GGUFTensor`s carrying the HF
name, the GGML type and the HF shape; `raw()` gives the block bytes per row and `dequantize()` float32, both with the
q/k rows that llama.cpp permutes for LLaMA rope put back in HF order.
"""
from __future__ import annotations

import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize as gguf_dequantize

from ember.errors import ModelFormatError

from .gguf_file import GGUFFile, GGUFReadError, read_gguf_file

__all__ = [
    "SUPPORTED_TENSOR_TYPES",
    "GGUFModel",
    "GGUFTensor",
    "describe_gguf",
    "open_gguf",
    "read_gguf_metadata",
    "supported_architectures",
]

GGUF_MAGIC = b"GGUF"

_T = GGMLQuantizationType
SUPPORTED_TENSOR_TYPES = frozenset(
    {_T.F32, _T.F16, _T.BF16, _T.Q8_0, _T.Q4_0, _T.Q4_1, _T.Q5_0, _T.Q5_1, _T.Q2_K, _T.Q3_K, _T.Q4_K, _T.Q5_K, _T.Q6_K}
)

# Tensors with no HF counterpart: llama3 rope factors, which hf_config() turns into `rope_scaling`.
_ROPE_FREQS = "rope_freqs.weight"
# LongRoPE's factor lists (Phi-3), which hf_config() turns into `rope_scaling` too
_LONGROPE_FACTORS = {"long_factor": "rope_factors_long.weight", "short_factor": "rope_factors_short.weight"}
_BLOCK_RE = re.compile(r"^blk\.(\d+)\.(.+)$")
_PERMUTED = ("attn_q", "attn_k")  # the q/k projections (weights and biases) llama.cpp permutes for LLaMA rope


def supported_architectures() -> list[str]:
    """The `general.architecture` values ember reads (each architecture file declares its own)."""
    from ..models import ARCHITECTURES

    return sorted(name for a in ARCHITECTURES for name in a.gguf)


def _unpermute_order(n_rows: int, n_head: int) -> np.ndarray:
    """Row order that undoes llama.cpp's q/k permute: `hf_rows = gguf_rows[order]`.

    llama.cpp writes `w.reshape(n_head, 2, d, cols).swapaxes(1, 2)` (d = rows // n_head // 2), i.e. GGUF row
    (h, j, t) holds HF row (h, t, j); rows are whole quantization blocks, so the order applies to raw bytes too.
    """
    return np.arange(n_rows).reshape(n_head, n_rows // n_head // 2, 2).swapaxes(1, 2).reshape(-1)


@dataclass(frozen=True)
class GGUFTensor:
    """One weight of a GGUF file, in HF naming and layout; reads nothing until asked."""

    gguf_name: str
    hf_name: str
    ggml_type: GGMLQuantizationType
    shape: tuple[int, ...]  # HF/numpy order: (out_features, in_features) for matrices
    _data: np.ndarray = field(repr=False, compare=False)  # the reader's view into the memory map
    _row_order: np.ndarray | None = field(default=None, repr=False, compare=False)
    _offset: float = field(default=0.0, repr=False, compare=False)  # stored as HF value + offset (Gemma's norms)

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)

    @property
    def n_bytes(self) -> int:
        block_size, type_size = GGML_QUANT_SIZES[self.ggml_type]
        return self.n_elements // block_size * type_size

    def raw(self) -> np.ndarray:
        """Block bytes as uint8 of shape (rows, bytes_per_row), rows in HF order; 1-D tensors are one row.

        A view into the memory map unless rows had to be un-permuted (then a copy)."""
        if self._offset:
            raise ValueError(f"{self.gguf_name}: stored with an offset of {self._offset}; only its values are read")
        data = self._data.view(np.uint8)
        if len(self.shape) == 1:
            if self._row_order is not None:  # a q/k bias: permute whole elements
                data = data.reshape(self.shape[0], -1)[self._row_order]
            return data.reshape(1, -1)
        data = data.reshape(self.shape[0], -1)
        return data if self._row_order is None else data[self._row_order]

    def dequantize(self) -> np.ndarray:
        """float32 in HF layout. F32 tensors come back as a read-only view into the memory map."""
        values = gguf_dequantize(self._data, self.ggml_type).reshape(self.shape)
        if self._offset:  # llama.cpp's Gemma norms hold 1 + w; HF's, and ember's sources, hold w
            values = values.astype(np.float32) - np.float32(self._offset)
        return values if self._row_order is None else values[self._row_order]


class GGUFModel:
    """An opened, checked GGUF file: plain metadata, HF config and lazily read tensors."""

    def __init__(self, path: Path, reader: GGUFFile) -> None:
        self.path = path
        self.metadata = reader.metadata
        self._reader = reader
        self.architecture: str = _architecture(path, self.metadata)
        from ..models import gguf_architecture

        self._model_arch, self._gguf_arch = gguf_architecture(self.architecture, str(path))
        self._reader_tensors = {t.name: t for t in reader.tensors}
        self._gguf_types = {t.name: t.tensor_type for t in reader.tensors}
        self._gguf_shapes = {t.name: tuple(reversed(t.dims)) for t in reader.tensors}
        _check_tensor_types(path, self._gguf_types)
        self._config = _hf_config(self)
        self._tensors = _build_tensors(self)
        self._by_hf_name = {t.hf_name: t for t in self._tensors}

    def hf_config(self) -> dict[str, Any]:
        """transformers-style config.json keys (a fresh dict on each call)."""
        return {k: (dict(v) if isinstance(v, dict) else v) for k, v in self._config.items()}

    def tensors(self) -> Iterator[GGUFTensor]:
        """Every HF weight of the model, in file order (rope factors are not weights: see `rope_scaling`)."""
        yield from self._tensors

    def tensor(self, hf_name: str) -> GGUFTensor:
        return self._by_hf_name[hf_name]

    def type_counts(self) -> dict[str, int]:
        """Number of tensors per GGML type name, over every tensor in the file."""
        return dict(Counter(t.name for t in self._gguf_types.values()).most_common())

    def parameter_count(self) -> int:
        """Elements of the HF weights (a tied embedding counted once, as transformers does)."""
        return sum(t.n_elements for t in self._tensors)

    def __repr__(self) -> str:
        return f"GGUFModel({str(self.path)!r}, architecture={self.architecture!r}, tensors={len(self._tensors)})"

    # -- helpers for the checks below -------------------------------------------------------------------------------
    def _key(self, suffix: str) -> str:
        return f"{self.architecture}.{suffix}"

    def _require(self, key: str) -> Any:
        if key not in self.metadata:
            raise ModelFormatError(f"{self.path}: missing metadata field {key}")
        return self.metadata[key]

    def _error(self, where: str, problem: str) -> ModelFormatError:
        return ModelFormatError(f"{self.path}: {where}: {problem}")


# -- opening ---------------------------------------------------------------------------------------------------------
def open_gguf(path: str | os.PathLike[str]) -> GGUFModel:
    """Open and check a GGUF file (llama or qwen2). Raises ModelFormatError naming the file and field/tensor."""
    path = Path(path)
    return GGUFModel(path, _read(path))


def read_gguf_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Only the metadata, as plain Python values (works on vocab-only files too)."""
    return _read(Path(path)).metadata


def _read(path: Path) -> GGUFFile:
    if not path.is_file():
        raise ModelFormatError(f"{path}: no such file")
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if len(magic) < len(GGUF_MAGIC):
        raise ModelFormatError(f"{path}: truncated GGUF file ({len(magic)} bytes)")
    if magic != GGUF_MAGIC:
        raise ModelFormatError(f"{path}: not a GGUF file (magic {magic!r}, expected {GGUF_MAGIC!r})")
    try:
        return read_gguf_file(path)
    except (GGUFReadError, OSError) as exc:
        size = path.stat().st_size
        raise ModelFormatError(f"{path}: truncated or corrupt GGUF file ({size} bytes): {exc}") from exc


def describe_gguf(source: GGUFModel | str | os.PathLike[str]) -> dict[str, Any]:
    """Summary for `ember inspect` of an opened GGUFModel or a path."""
    model = source if isinstance(source, GGUFModel) else open_gguf(source)
    meta = model.metadata
    config = model.hf_config()
    return {
        "path": str(model.path),
        "name": meta.get("general.name"),
        "architecture": model.architecture,
        "parameter_count": model.parameter_count(),
        "tensor_types": model.type_counts(),
        "file_type": meta.get("general.file_type"),
        "context_length": config["max_position_embeddings"],
        "vocab_size": config["vocab_size"],
        "tokenizer_model": meta.get("tokenizer.ggml.model"),
        "tokenizer_pre": meta.get("tokenizer.ggml.pre"),
        "has_chat_template": isinstance(meta.get("tokenizer.chat_template"), str),
    }


# -- checks and config -----------------------------------------------------------------------------------------------
def _architecture(path: Path, metadata: dict[str, Any]) -> str:
    arch = metadata.get("general.architecture")
    if arch is None:
        raise ModelFormatError(f"{path}: missing metadata field general.architecture")
    return arch


def _check_tensor_types(path: Path, types: dict[str, GGMLQuantizationType]) -> None:
    supported = ", ".join(sorted(t.name for t in SUPPORTED_TENSOR_TYPES))
    for name, ggml_type in types.items():
        if ggml_type not in SUPPORTED_TENSOR_TYPES:
            raise ModelFormatError(
                f"{path}: tensor {name}: unsupported tensor type {ggml_type.name} (supported: {supported})"
            )


def _positive_int(model: GGUFModel, key: str, default: int | None = None) -> int:
    value = model.metadata.get(key, default) if default is not None else model._require(key)
    if isinstance(value, list) or not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise model._error(key, f"expected a positive integer, found {value!r}")
    return value


def _positive_float(model: GGUFModel, key: str, default: float) -> float:
    value = model.metadata.get(key, default)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
        raise model._error(key, f"expected a finite number > 0, found {value!r}")
    return float(value)


def _token_id(model: GGUFModel, key: str) -> int | None:
    value = model.metadata.get(key)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
        raise model._error(key, f"expected a token id (an integer >= 0), found {value!r}")
    return value


def _hf_config(model: GGUFModel) -> dict[str, Any]:
    meta, key = model.metadata, model._key
    hidden = _positive_int(model, key("embedding_length"))
    n_head = _positive_int(model, key("attention.head_count"))
    n_kv_head = _positive_int(model, key("attention.head_count_kv"), default=n_head)
    if key("attention.key_length") not in meta and hidden % n_head:
        raise model._error(key("attention.head_count"), f"{n_head} does not divide embedding_length {hidden} "
                                                        "(and there is no attention.key_length)")
    head_dim = _positive_int(model, key("attention.key_length"), default=hidden // n_head)
    value_dim = _positive_int(model, key("attention.value_length"), default=head_dim)
    if value_dim != head_dim:
        raise model._error(key("attention.value_length"), f"{value_dim} != key_length {head_dim} is not supported")
    rope_dims = meta.get(key("rope.dimension_count"), head_dim)
    partial = {}
    if rope_dims != head_dim:
        if not model._gguf_arch.partial_rotary:
            raise model._error(key("rope.dimension_count"),
                               f"partial rotary ({rope_dims} of {head_dim}) is not supported")
        if not isinstance(rope_dims, int) or isinstance(rope_dims, bool) or not 0 < rope_dims < head_dim or \
                rope_dims % 2 or int(head_dim * (rope_dims / head_dim)) != rope_dims:
            raise model._error(key("rope.dimension_count"), f"expected an even number of dims below head_dim "
                                                           f"{head_dim}, found {rope_dims!r}")
        partial["partial_rotary_factor"] = rope_dims / head_dim
    if n_head % n_kv_head:
        raise model._error(key("attention.head_count_kv"), f"{n_kv_head} does not divide head_count {n_head}")
    vocab_size = _vocab_size(model)
    rope_theta = _positive_float(model, key("rope.freq_base"), 10000.0)
    eps = model._require(key("attention.layer_norm_rms_epsilon"))
    if not isinstance(eps, float) or not math.isfinite(eps) or eps <= 0:
        raise model._error(key("attention.layer_norm_rms_epsilon"), f"expected a finite float > 0, found {eps!r}")
    has = model._gguf_types.__contains__
    window_key = key("attention.sliding_window")
    sliding_window = _positive_int(model, window_key) if meta.get(window_key) else None
    extra = model._gguf_arch.extra_config(model) if model._gguf_arch.extra_config is not None else {}
    return {
        "model_type": model._gguf_arch.model_type,
        "hidden_size": hidden,
        "intermediate_size": _positive_int(model, key("feed_forward_length")),
        "num_hidden_layers": _positive_int(model, key("block_count")),
        "num_attention_heads": n_head,
        "num_key_value_heads": n_kv_head,
        "head_dim": head_dim,
        "rms_norm_eps": eps,
        "rope_theta": rope_theta,
        "rope_scaling": _rope_scaling(model, rope_theta, head_dim, rope_dims),
        "vocab_size": vocab_size,
        "max_position_embeddings": _positive_int(model, key("context_length")),
        "tie_word_embeddings": not has("output.weight"),
        "attention_bias": has("blk.0.attn_q.bias"),
        "sliding_window": sliding_window,
        "bos_token_id": _token_id(model, "tokenizer.ggml.bos_token_id"),
        "eos_token_id": _token_id(model, "tokenizer.ggml.eos_token_id"),
        **partial,
        **extra,
    }


def _vocab_size(model: GGUFModel) -> int:
    key = model._key("vocab_size")
    if key in model.metadata:
        return _positive_int(model, key)
    tokens = model.metadata.get("tokenizer.ggml.tokens")
    if isinstance(tokens, list) and tokens:
        return len(tokens)
    if "token_embd.weight" in model._gguf_shapes:
        return model._gguf_shapes["token_embd.weight"][0]
    raise model._error(key, "missing, and there is neither tokenizer.ggml.tokens nor token_embd.weight to infer it")


def _rope_scaling(model: GGUFModel, rope_theta: float, head_dim: int, rope_dims: int) -> dict[str, Any] | None:
    meta, key = model.metadata, model._key
    kind = meta.get(key("rope.scaling.type"))
    factor = meta.get(key("rope.scaling.factor"))
    original = meta.get(key("rope.scaling.original_context_length"))
    if kind in (None, "none") and any(name in model._gguf_types for name in _LONGROPE_FACTORS.values()):
        return _longrope_scaling(model, rope_dims, original)
    if kind in (None, "none") and _ROPE_FREQS in model._gguf_types:
        return _llama3_rope_scaling(model, rope_theta, head_dim, original or 8192)
    if kind in (None, "none"):
        return None
    if not isinstance(factor, float) or factor <= 0:
        raise model._error(key("rope.scaling.factor"), f"rope scaling {kind!r} needs a positive factor: {factor!r}")
    if kind == "linear":
        return {"rope_type": "linear", "factor": factor}
    if kind == "yarn":
        scaling: dict[str, Any] = {"rope_type": "yarn", "factor": factor}
        if original:
            scaling["original_max_position_embeddings"] = int(original)
        for gguf_suffix, hf_key in (("yarn_beta_fast", "beta_fast"), ("yarn_beta_slow", "beta_slow"),
                                    ("attn_factor", "attention_factor")):
            if key(f"rope.scaling.{gguf_suffix}") in meta:
                scaling[hf_key] = float(meta[key(f"rope.scaling.{gguf_suffix}")])
        return scaling
    raise model._error(key("rope.scaling.type"), f"unsupported rope scaling {kind!r} (supported: none, linear, yarn)")


def _longrope_scaling(model: GGUFModel, rope_dims: int, original: Any) -> dict[str, Any]:
    """HF's longrope `rope_scaling` from what llama.cpp's Phi-3 converter writes: the factor lists as the tensors
    rope_factors_long/short.weight (rope.dimension_count / 2 values each), the pretraining context as
    rope.scaling.original_context_length and the cos/sin multiplier as rope.scaling.attn_factor."""
    key = model._key
    scaling: dict[str, Any] = {"rope_type": "longrope"}
    for hf_key, name in _LONGROPE_FACTORS.items():
        if name not in model._gguf_types:
            raise model._error("tensors", f"{name} is missing (longrope needs both factor tensors)")
        values = gguf_dequantize(model._reader_tensors[name].data, model._gguf_types[name]).reshape(-1)
        if values.shape != (rope_dims // 2,):
            raise model._error(f"tensor {name}", f"has {values.size} values, expected rope.dimension_count / 2 = "
                                                 f"{rope_dims // 2}")
        scaling[hf_key] = [float(v) for v in values]
    if not isinstance(original, int) or isinstance(original, bool) or original <= 0:
        raise model._error(key("rope.scaling.original_context_length"),
                           f"longrope needs the pretraining context length, found {original!r}")
    scaling["original_max_position_embeddings"] = original
    if key("rope.scaling.attn_factor") in model.metadata:
        scaling["attention_factor"] = _positive_float(model, key("rope.scaling.attn_factor"), 1.0)
    return scaling


def _llama3_rope_factors(rope_theta: float, head_dim: int, factor: float, low: float, high: float,
                         original: int) -> np.ndarray:
    """The per-frequency wavelength factors llama.cpp's converter writes as rope_freqs.weight."""
    freqs = 1.0 / rope_theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    wavelen = 2 * math.pi / freqs
    smooth = (original / wavelen - low) / (high - low)
    factors = 1.0 / ((1 - smooth) / factor + smooth)
    return np.where(wavelen < original / high, 1.0, np.where(wavelen > original / low, factor, factors))


def _llama3_rope_scaling(model: GGUFModel, rope_theta: float, head_dim: int, original: int) -> dict[str, Any] | None:
    """Recover HF's llama3 `rope_scaling` from the rope_freqs.weight factors (the only trace llama.cpp keeps).

    Factors are 1 (short wavelengths), `factor` (long ones) and `1 / ((1 - s) / factor + s)` in between with
    `s = (original / wavelen - low) / (high - low)`: s is linear in 1/wavelen, so two smooth points give low and high
    for the stated (or default 8192) original context. The result is checked by recomputing the factors.
    """
    where = f"tensor {_ROPE_FREQS}"
    data = model._reader_tensors[_ROPE_FREQS].data
    factors = gguf_dequantize(data, model._gguf_types[_ROPE_FREQS]).astype(np.float64).reshape(-1)
    if factors.shape != (head_dim // 2,):
        raise model._error(where, f"has {factors.size} values, expected head_dim / 2 = {head_dim // 2}")
    factor = float(factors.max())
    if np.allclose(factors, 1.0):
        return None
    freqs = 1.0 / rope_theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    x = original * freqs / (2 * math.pi)  # original / wavelen
    inner = (factors > 1 + 1e-4) & (factors < factor * (1 - 1e-4))
    low, high = 1.0, 4.0  # Llama 3.1's values, used when too few points lie between the two plateaus
    if inner.sum() >= 2:
        s = (1 / factors[inner] - 1 / factor) / (1 - 1 / factor)
        slope, intercept = np.polyfit(x[inner], s, 1)
        low = float(-intercept / slope)
        high = float(low + 1 / slope)
    expected = _llama3_rope_factors(rope_theta, head_dim, factor, low, high, original)
    if not np.allclose(expected, factors, rtol=1e-3):
        raise model._error(where, "rope factors do not follow llama3 rope scaling")
    return {
        "rope_type": "llama3",
        "factor": round(factor, 6),
        "low_freq_factor": round(low, 6),
        "high_freq_factor": round(high, 6),
        "original_max_position_embeddings": int(original),
    }


def _model_parameters(model: GGUFModel) -> dict[str, tuple[tuple[int, ...], str]]:
    """HF name -> (shape, GGUF name) of every weight the architecture's model has for this file's config."""
    from ..config import ModelConfig
    from ..models import architecture_of
    from ..models.base import gguf_tensor_names

    config = ModelConfig.from_dict(model.hf_config(), source=str(model.path))
    # the config's own architecture: one general.architecture may hold several (llama.cpp's "llama" with experts is
    # Mixtral)
    params = architecture_of(config.model_type).parameters(config)
    gguf_names = gguf_tensor_names(model._gguf_arch, list(params), config.num_hidden_layers)
    return {hf: (tuple(int(d) for d in params[hf].shape), name) for name, hf in gguf_names.items()}


def _metadata_summary(config: dict[str, Any]) -> str:
    keys = ("vocab_size", "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
            "head_dim")
    return ", ".join(f"{k} {config[k]}" for k in keys)


def _build_tensors(model: GGUFModel) -> list[GGUFTensor]:
    config = model._config
    n_layers = config["num_hidden_layers"]
    params = _model_parameters(model)
    hf_of = {gguf_name: hf for hf, (_, gguf_name) in params.items()}
    permute_heads = {"attn_q": config["num_attention_heads"], "attn_k": config["num_key_value_heads"]}
    tensors = []
    for name, reader_tensor in model._reader_tensors.items():
        if name == _ROPE_FREQS or name in _LONGROPE_FACTORS.values():
            continue
        match = _BLOCK_RE.match(name)
        if match and int(match.group(1)) >= n_layers:
            raise model._error(f"tensor {name}", f"block {match.group(1)} is beyond block_count {n_layers}")
        hf_name = hf_of.get(name)
        if hf_name is None:
            raise model._error(f"tensor {name}", f"not a tensor of a {model.architecture} model with this "
                                                 f"metadata")
        shape = model._gguf_shapes[name]
        want = params[hf_name][0]
        if shape != want:
            raise model._error(f"tensor {name}", f"shape {shape} disagrees with metadata, which gives {want} "
                                                 f"({_metadata_summary(config)})")
        row_order = None
        base = (match.group(2) if match else name).split(".")[0]
        if model._gguf_arch.permuted_qk and base in _PERMUTED:
            row_order = _unpermute_order(shape[0], permute_heads[base])
        offset = model._gguf_arch.norm_offset if hf_name.endswith("norm.weight") else 0.0
        tensors.append(GGUFTensor(name, hf_name, model._gguf_types[name], shape, reader_tensor.data, row_order,
                                  offset))
    present = {t.gguf_name for t in tensors}
    missing = [gguf_name for _, gguf_name in params.values() if gguf_name not in present]
    if missing:
        more = f" (+{len(missing) - 5} more)" if len(missing) > 5 else ""
        raise model._error("tensors", f"missing {', '.join(missing[:5])}{more}")
    return tensors
