"""True-shape random weights for benchmark builds (`weights == "random"`), made at load time.

The default fill is numpy with a fixed seed: normal(0, 0.02) for matrices and other float tensors, 1.0 for 1-D norm
weights, uniform bits for integer (packed quantized) tensors, and scales/mins that give quantized weights the same
spread as float ones (`fill_stats`). Drawing billions of normals in numpy is slow, so each
tensor is a random rotation of one seeded pool per dtype, tiled to its shape: values are distributed like the
pool, distinct between tensors, and the whole fill runs at memory speed.

Hook: `make_random_weights(..., fill=...)` takes any `RandomFill`, so a compiled on-device fill function (the
optional `fill_random` of DESIGN.md) can replace the numpy one without touching the loader.
"""
from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from .artifact import ParamInfo
from .tvm_import import import_tvm

POOL_SIZE = (1 << 20) + 7  # odd, so tiles do not line up with power-of-two rows
MATRIX_STD = 0.02


class RandomFill(Protocol):
    def __call__(self, param: ParamInfo, index: int, device: Any) -> Any:
        """Return a tvm.runtime.Tensor of param.shape / param.dtype on `device`."""
        ...


def is_norm_weight(param: ParamInfo) -> bool:
    return len(param.shape) == 1 and "norm" in param.name.lower()


# Spread of the random codes a packed weight holds: uniform int8 (std 73.9) or uniform b-bit codes 0..2^b-1.
_CODE_STD = {8: 73.9, 6: 18.47, 5: 9.23, 4: 4.61, 3: 2.29, 2: 1.12}
# K-quants (scheme names q2_k .. q6_k): random uint8 scale and min codes (mean 127.5; Q2_K: the two nibbles of a
# random byte, mean 7.5), int8 ones (Q3_K, Q6_K: mean 0, std 73.9) times the super block's d / dmin
_CODE_MEAN_U8, _CODE_MEAN_NIBBLE, _CODE_STD_I8 = 127.5, 7.5, 73.9


def fill_stats(param: ParamInfo) -> tuple[float, float]:
    """(std, mean) of a float tensor's random values, chosen so that every weight *as the model sees it* has std
    MATRIX_STD around 0, quantized ones included: a scale of random codes is near MATRIX_STD / std(codes), and a
    min cancels the codes' mean (q*s + m with m = -mean(q) s; K-quants: dmin * mean(min code) = d * mean(scale
    code) * mean(q)). Uniform scales of std MATRIX_STD instead would make 4-bit weights ~9x (8-bit ~75x) too large,
    and a deep random model's activations then blow up in float16."""
    if is_norm_weight(param):
        return 0.0, 1.0
    piece = param.name.rsplit(".", 1)[-1]
    bits = _scheme_bits(param.scheme)
    if bits is None or piece not in ("scales", "mins", "super", "super_mins"):
        return MATRIX_STD, 0.0
    scale = MATRIX_STD / _CODE_STD[bits]
    code_mean = ((1 << bits) - 1) / 2
    if piece in ("super", "super_mins"):  # K-quants
        if bits in (3, 6):  # Q3_K, Q6_K: int8 scale codes around 0, codes q - 4 / q - 32 around 0
            d = MATRIX_STD / (_CODE_STD_I8 * _CODE_STD[bits])
            return d / 8, d
        d = scale / (_CODE_MEAN_NIBBLE if bits == 2 else _CODE_MEAN_U8)
        return (d / 8, d) if piece == "super" else (d * code_mean / 8, d * code_mean)
    if piece == "scales":
        return scale / 8, scale
    return scale / 8, -code_mean * scale


def _scheme_bits(scheme: str | None) -> int | None:
    """2-6 or 8 for a quantized scheme name (q4f16_1, q8f16, q4_k, ...), None for float ones (q0...)."""
    if not scheme or len(scheme) < 2 or scheme[0] != "q" or not scheme[1].isdigit():
        return None
    bits = int(scheme[1])
    return bits if bits in _CODE_STD else None


class NumpyFill:
    """Seeded host-side fill, copied to the device tensor by tensor."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self._pools: dict[str, np.ndarray] = {}

    def _pool(self, dtype: str) -> np.ndarray:
        if dtype not in self._pools:
            np_dtype = _numpy_dtype(dtype)
            if np.issubdtype(np_dtype, np.integer):
                info = np.iinfo(np_dtype)
                pool = self.rng.integers(info.min, info.max, size=POOL_SIZE, dtype=np_dtype, endpoint=True)
            else:
                pool = (self.rng.standard_normal(POOL_SIZE, dtype=np.float32) * MATRIX_STD).astype(np_dtype)
            self._pools[dtype] = pool
        return self._pools[dtype]

    def host_array(self, param: ParamInfo) -> np.ndarray:
        np_dtype = _numpy_dtype(param.dtype)
        if is_norm_weight(param):
            return np.ones(param.shape, dtype=np_dtype)
        pool = np.roll(self._pool(param.dtype), -int(self.rng.integers(POOL_SIZE)))
        values = np.resize(pool, tuple(param.shape))
        std, mean = fill_stats(param)
        if np.issubdtype(np_dtype, np.integer) or (std, mean) == (MATRIX_STD, 0.0):
            return values
        return (values.astype(np.float32) * (std / MATRIX_STD) + mean).astype(np_dtype)

    def __call__(self, param: ParamInfo, index: int, device: Any) -> Any:
        tvm = import_tvm()
        return tvm.runtime.tensor(self.host_array(param), device)


class DeviceFill:
    """The library's compiled `fill_random_<dtype>(n, seed, scale_ppm, offset_ppm)`: weights are made on the
    device itself (no host arrays, no copies), uniform with the std and mean of `fill_stats`."""

    def __init__(self, vm: Any, seed: int = 0) -> None:
        self.vm, self.seed = vm, seed

    @staticmethod
    def available(functions: list[str], params: list[ParamInfo]) -> bool:
        return all(f"fill_random_{p.dtype}" in functions for p in params)

    def __call__(self, param: ParamInfo, index: int, device: Any) -> Any:
        tvm = import_tvm()
        shape = tvm.runtime.ShapeTuple
        std, mean = fill_stats(param)
        n = int(np.prod(param.shape))
        flat = self.vm[f"fill_random_{param.dtype}"](
            shape([n]), shape([self.seed * 1_000_003 + index]), shape([round(std * 1e6)]), shape([round(mean * 1e6)]))
        return flat._create_view(tuple(param.shape))


def make_random_weights(params: list[ParamInfo], device: Any, fill: RandomFill | None = None) -> list[Any]:
    fill = fill or NumpyFill(seed=0)
    return [fill(p, i, device) for i, p in enumerate(params)]


def _numpy_dtype(dtype: str) -> np.dtype:
    if dtype in ("bfloat16",) or dtype.startswith("float8"):
        import ml_dtypes

        return np.dtype(getattr(ml_dtypes, dtype))
    return np.dtype(dtype)
