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
        # The PrimFunc is made here with its scalar parameters in a fixed order: nn's tensor_expr_op would order
        # them by set iteration (object addresses), which made two builds of a big model differ.
        params = [tirx.Var(name, "int64") for name in ARGS]  # nn.spec.Int: int64
        pn, pseed, pscale, poffset = params

        def element(i):
            bits = _hash(i, pseed)
            if dtype in BIT_DTYPES:
                return bits.astype(dtype)
            unit = bits.astype("float32") * tirx.const(2.0 ** -32, "float32")  # [0, 1)
            std = pscale.astype("float32") * tirx.const(1e-6, "float32")
            value = (unit * 2.0 - 1.0) * tirx.const(3 ** 0.5, "float32") * std
            return (value + poffset.astype("float32") * tirx.const(1e-6, "float32")).astype(dtype)

        out = te.compute((pn,), element, name="fill_random")
        func = te.create_prim_func([*params, out]).without_attr("global_symbol")
        return op.tensor_ir_op(func, function_name(dtype), [n, seed, scale_ppm, offset_ppm],
                               nn.Tensor.placeholder((n,), dtype))

    return fill


def fill_spec() -> dict[str, Any]:
    spec: dict[str, Any] = {arg: int for arg in ARGS}
    spec["$"] = {"param_mode": "none", "effect_mode": "none"}
    return spec


__all__ = ["function_name", "fill_method", "fill_spec", "nn"]
