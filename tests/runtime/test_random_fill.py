"""Random weights of a benchmark build (`--random-weights`): every weight, as the model computes with it, has the
spread of a float one (std ~0.02 around 0), quantized schemes included, and the device fill is the same on every load.
Dequantized with gguf's own dequantizers (ember's q4f16 / q4f16_1 / q8f16 hold Q4_0 / Q4_1 / Q8_0 values)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize

import ember
from ember.compiler import CompileRequest, compile_model
from ember.runtime.random_weights import MATRIX_STD, NumpyFill

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "quant"))
from model_fixtures import random_llama  # noqa: E402

GGML = {"q4f16": T.Q4_0, "q4f16_1": T.Q4_1, "q8f16": T.Q8_0}


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("random-fill")
    random_llama(num_hidden_layers=1, vocab_size=128, hidden_size=64, intermediate_size=128, num_attention_heads=2,
                 num_key_value_heads=1).save_pretrained(root / "hf")
    return compile_model(CompileRequest(model=str(root / "hf"), target="cpu", quant="q4f16_1", random_weights=True,
                                        output=str(root / "art")))


def _as_gguf_blocks(scheme: str, pieces: dict[str, np.ndarray]) -> np.ndarray:
    """ember's packed arrays -> GGUF blocks of the same values, for gguf's dequantizer."""
    scales = pieces["scales"].astype(np.float16)
    rows, groups = scales.shape
    if scheme == "q8f16":
        codes = pieces["qweight"].astype(np.int8).reshape(rows, groups, 32)
        blocks = [scales.reshape(rows, groups, 1).view(np.uint8), codes.view(np.uint8)]
    else:
        words = pieces["qweight"].astype(np.uint32).reshape(rows, groups, 4)
        nibbles = np.stack([(words >> (4 * i)) & 15 for i in range(8)], axis=-1).reshape(rows, groups, 32)
        packed = (nibbles[..., :16] | (nibbles[..., 16:] << 4)).astype(np.uint8)  # GGUF: byte i = (i, i + 16)
        head = [scales.reshape(rows, groups, 1).view(np.uint8)]
        if scheme == "q4f16_1":
            head.append(pieces["mins"].astype(np.float16).reshape(rows, groups, 1).view(np.uint8))
        blocks = [*head, packed]
    return np.concatenate(blocks, axis=-1).reshape(rows, -1)


def _weights(params) -> dict[str, np.ndarray]:
    """Every quantized weight of the loaded artifact, dequantized by gguf."""
    by_name = {p.name: (p, array) for p, array in params}
    out = {}
    for name, (info, array) in by_name.items():
        if not name.endswith(".qweight"):
            continue
        base = name[: -len(".qweight")]
        pieces = {piece: by_name[f"{base}.{piece}"][1] for piece in ("qweight", "scales", "mins")
                  if f"{base}.{piece}" in by_name}
        out[base] = dequantize(_as_gguf_blocks(info.scheme, pieces), GGML[info.scheme])
    return out


def _loaded(artifact: Path, random_fill=None) -> dict[str, np.ndarray]:
    engine = ember.load(artifact, random_fill=random_fill)
    params = engine.artifact.params
    return _weights([(p, params[i].numpy()) for i, p in enumerate(engine.manifest.params)])


@pytest.mark.parametrize("fill", ["device", "numpy"])
def test_quantized_random_weights_have_the_spread_of_float_ones(artifact, fill):
    weights = _loaded(artifact, None if fill == "device" else NumpyFill(seed=0))
    schemes = {p.scheme for p in ember.load(artifact).manifest.params if p.scheme}
    assert schemes == {"q4f16_1", "q8f16"}  # 4-bit layers, 8-bit embedding and head
    assert weights and all(np.isfinite(w).all() for w in weights.values())
    for name, w in weights.items():
        assert 0.6 * MATRIX_STD < w.std() < 1.4 * MATRIX_STD, (name, w.std())
        assert abs(w.mean()) < 0.15 * MATRIX_STD, (name, w.mean())


def test_the_device_fill_is_the_same_on_every_load(artifact):
    first, second = _loaded(artifact), _loaded(artifact)
    assert first.keys() == second.keys()
    assert all(np.array_equal(first[k], second[k]) for k in first)


@pytest.mark.parametrize("scheme", ["q2_k", "q3_k", "q4_k", "q5_k", "q6_k"])
def test_kquant_random_pieces_have_the_spread_of_float_ones(scheme):
    """K-quant pieces from the numpy fill, dequantized by ember's codec (bit-exact with gguf's, test_kquant_codecs):
    std ~MATRIX_STD around 0, whatever the codes' width (Q2_K's nibble codes, Q3_K/Q6_K's int8 ones)."""
    from ember.passes.quant_schemes import SCHEMES, Packed, dequantize
    from ember.runtime.artifact import ParamInfo

    fmt, rows, cols = SCHEMES[scheme].format, 64, 1024
    fill = NumpyFill(seed=1)
    pieces = {name: fill.host_array(ParamInfo(f"layer.{name}", list(t.shape), t.dtype, scheme=scheme))
              for name, t in zip(fmt.piece_names, fmt.piece_types(rows, cols))}
    w = dequantize(Packed(**pieces), fmt, cols)
    assert np.isfinite(w).all()
    assert 0.5 * MATRIX_STD < w.std() < 2 * MATRIX_STD, w.std()
    assert abs(w.mean()) < 0.25 * MATRIX_STD, w.mean()
