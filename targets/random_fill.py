"""On-device random weights for benchmark builds (`--random-weights`).

A 16 GB checkpoint of random numbers is never written or shipped: the library exports one
`fill_random_<dtype>(n, seed, scale_ppm, offset_ppm)` function per weight dtype, and the runtime calls
it for each parameter on the device. Floats are uniform with the requested standard deviation
(scale) around an offset; integer (packed) dtypes get random bits. The generator is a counter-based
hash (murmur3's finalizer of index + seed), so it needs no state and runs in parallel.
"""
from __future__ import annotations

from typing import Any

from tvm import te, tirx
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import op

ARGS = ("n", "seed", "scale_ppm", "offset_ppm")
FLOAT_DTYPES = ("float32", "float16", "bfloat16")
BIT_DTYPES = ("uint32", "int32", "uint8", "int8")


def function_name(dtype: str) -> str:
    return f"fill_random_{dtype}"


def _hash(index: Any, seed: Any) -> Any:
    u32 = lambda v: tirx.const(v, "uint32")  # noqa: E731
    x = index.astype("uint32") * u32(0x9E3779B1) + seed.astype("uint32")
    x = x ^ (x >> u32(16))
    x = x * u32(0x85EBCA6B)
    x = x ^ (x >> u32(13))
    x = x * u32(0xC2B2AE35)
    return x ^ (x >> u32(16))


def fill_method(dtype: str):
    """A method for `_LoweredModel`: (n, seed, scale_ppm, offset_ppm) -> dtype[n]."""
    if dtype not in FLOAT_DTYPES + BIT_DTYPES:
        raise ValueError(f"no random fill for dtype {dtype}")

    def fill(n, seed, scale_ppm, offset_ppm):
        def compute(n, seed, scale_ppm, offset_ppm):
            def element(i):
                bits = _hash(i, seed)
                if dtype in BIT_DTYPES:
                    return bits.astype(dtype)
                unit = bits.astype("float32") * tirx.const(2.0 ** -32, "float32")  # [0, 1)
                std = scale_ppm.astype("float32") * tirx.const(1e-6, "float32")
                value = (unit * 2.0 - 1.0) * tirx.const(3 ** 0.5, "float32") * std
                return (value + offset_ppm.astype("float32") * tirx.const(1e-6, "float32")).astype(dtype)

            return te.compute((n,), element, name="fill_random")

        return op.tensor_expr_op(compute, function_name(dtype), [n, seed, scale_ppm, offset_ppm])

    return fill


def fill_spec() -> dict[str, Any]:
    spec: dict[str, Any] = {arg: int for arg in ARGS}
    spec["$"] = {"param_mode": "none", "effect_mode": "none"}
    return spec


__all__ = ["function_name", "fill_method", "fill_spec", "nn"]
