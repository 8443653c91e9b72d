"""ember's rope and KV-append kernels (kernels/kv_append.cuh) in place of the two TVM's paged KV cache runs
before attention: `fused_rope` (split fused qkv, rotate q and k) and `tir_kv_cache_transpose_append` (write k and
v into the pages).

They stay two launches: TVM's runtime (paged_kv_cache.cc, AttentionWithFusedQKV) calls them as separate packed
functions, the rope with (qkv, positions, q, k, v, apply_rope) and the append with (pages, k, v, slots); neither
gets what the other needs, and the runtime is TVM's, not ember's. What changes is that each is one ember kernel of
16-byte loads that follows the PDL contract, so it can start while its predecessor finishes.

The rope's parameters come from the ROPE_ATTR attribute targets/lower.py puts on `fused_rope`; without it, for
rope variants other than default and llama3, and for longrope's signature, TVM's kernels stay.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any

import tvm
from tvm import tirx
from tvm.script import tirx as T

from ..cpu.attention import _shape, swap_kernel
from ..lower import ROPE_ATTR
from .extern_kernel import ATTRS

ENV = "EMBER_CUDA_KV"  # "0" keeps TVM's rope and append kernels
ROPE_NAME = "fused_rope"
APPEND_NAME = "tir_kv_cache_transpose_append"
DTYPES = ("float16", "bfloat16")
VARIANTS = {"default": 0, "llama3": 1}
THREADS = 128
MARK = "ember.kv_kernel"  # on ember's replacements: a second run of the pass leaves them
FUNC_ATTRS = {**ATTRS, "tirx.noalias": True, MARK: True}


def rope_constants(info: dict[str, Any]) -> tuple[int, float, float, float, float, float]:
    """(variant, theta, scale, inv_factor, alpha, beta) as TVM's rope_freq_* derive them (float64, then fp32)."""
    scaling = info.get("scaling") or {}
    kind = scaling.get("rope_type", "default")
    if kind not in VARIANTS:
        raise ValueError(f"rope_type {kind!r}")
    inv_factor = alpha = beta = 0.0
    if kind == "llama3":
        inv_diff = 1.0 / (scaling["high_freq_factor"] - scaling["low_freq_factor"])
        inv_factor = 1.0 / scaling["factor"]
        alpha = scaling["original_max_position_embeddings"] / (2 * math.pi) * inv_diff
        beta = scaling["low_freq_factor"] * inv_diff
    return VARIANTS[kind], float(info["theta"]), float(info.get("scale", 1.0)), inv_factor, alpha, beta


def rotary_name(d: int, rd: int, h_q: int, h_kv: int, variant: int) -> str:
    return f"ember::kv::rotary<{d}, {rd}, {h_q}, {h_kv}, {variant}>"


def append_name(d: int, h_kv: int, page: int) -> str:
    return f"ember::kv::append<{d}, {h_kv}, {page}>"


def rope_kernel(h_q: int, h_kv: int, d: int, dtype: str, info: dict[str, Any]) -> tirx.PrimFunc:
    """Same signature as TVM's `fused_rope` of `llama_rope_with_position_map` (non-longrope)."""
    rd = int(info.get("rotary_dim", d))
    variant, theta, scale, inv_factor, alpha, beta = rope_constants(info)
    heads = h_q + 2 * h_kv
    chunks = d // 8
    name = rotary_name(d, rd, h_q, h_kv, variant)

    # fmt: off
    @T.prim_func(private=True, s_tir=True)
    def fused_rope(var_qkv: T.handle, var_position_map: T.handle, var_q: T.handle, var_k: T.handle,
                   var_v: T.handle, apply_rope: T.int64):
        T.func_attr(FUNC_ATTRS)
        seq_len = T.int32()
        position_map_elem_offset = T.int32()
        qkv = T.match_buffer(var_qkv, (seq_len, heads, d), dtype)
        q = T.match_buffer(var_q, (seq_len, h_q, d), dtype)
        k = T.match_buffer(var_k, (seq_len, h_kv, d), dtype)
        v = T.match_buffer(var_v, (seq_len, h_kv, d), dtype)
        position_map = T.match_buffer(var_position_map, (seq_len,), "int32", elem_offset=position_map_elem_offset)
        for bx in T.thread_binding(T.max(1, T.ceildiv(seq_len * (heads * chunks), THREADS)), thread="blockIdx.x"):
            for tx in T.thread_binding(THREADS, thread="threadIdx.x"):
                T.evaluate(T.call_extern("int32", name, qkv.data, T.address_of(position_map[0]), q.data, k.data,
                                         v.data, seq_len, apply_rope, T.float32(theta), T.float32(scale),
                                         T.float32(inv_factor), T.float32(alpha), T.float32(beta)))
    # fmt: on
    return fused_rope


def append_kernel(h_kv: int, d: int, page: int, dtype: str) -> tirx.PrimFunc:
    """Same signature as TVM's `tir_kv_cache_transpose_append`."""
    chunks = d // 8
    name = append_name(d, h_kv, page)

    # fmt: off
    @T.prim_func(private=True, s_tir=True)
    def tir_kv_cache_transpose_append(var_pages: T.handle, var_k_data: T.handle, var_v_data: T.handle,
                                      var_position_map: T.handle):
        T.func_attr(FUNC_ATTRS)
        ntoken = T.int64()
        num_pages = T.int64()
        pages_elem_offset = T.int64()
        position_map_elem_offset = T.int32()
        pages = T.match_buffer(var_pages, (num_pages, 2, h_kv, page, d), dtype, elem_offset=pages_elem_offset)
        k_data = T.match_buffer(var_k_data, (ntoken, h_kv, d), dtype)
        v_data = T.match_buffer(var_v_data, (ntoken, h_kv, d), dtype)
        position_map = T.match_buffer(var_position_map, (ntoken,), "int32", elem_offset=position_map_elem_offset)
        assert pages_elem_offset % 8 == 0, "tir_kv_cache_transpose_append: pages must start 16-byte aligned"
        for bx in T.thread_binding(T.max(T.int64(1), T.ceildiv(ntoken * (h_kv * chunks), THREADS)),
                                   thread="blockIdx.x"):
            for tx in T.thread_binding(THREADS, thread="threadIdx.x"):
                T.evaluate(T.call_extern("int32", name, T.address_of(pages[0, 0, 0, 0, 0]), k_data.data,
                                         v_data.data, T.address_of(position_map[0]), ntoken))
    # fmt: on
    return tir_kv_cache_transpose_append


def _dtype_ok(buffers) -> str | None:
    dtype = str(buffers[0].dtype)
    return dtype if dtype in DTYPES and all(str(b.dtype) == dtype for b in buffers) else None


def rope_signature(func: tirx.PrimFunc) -> tuple[int, int, int, str, dict[str, Any]] | None:
    """(h_q, h_kv, d, dtype, rope info) of TVM's `fused_rope` where the ember kernel covers it, else None."""
    params = list(func.params)
    if len(params) != 6 or func.attrs is None or ROPE_ATTR not in func.attrs:
        return None
    if str(params[5].ty).removeprefix("T.") != "int64" or isinstance(params[5].ty, tirx.buffer.BufferType):
        return None  # longrope passes its ext_factors buffer here
    buffers = [b for b in params[:5] if isinstance(b.ty, tirx.buffer.BufferType)]
    if len(buffers) != 5 or str(buffers[1].dtype) != "int32":
        return None
    dtype = _dtype_ok([buffers[0], buffers[2], buffers[3], buffers[4]])
    qkv, q, k, v = (_shape(buffers[i]) for i in (0, 2, 3, 4))
    if dtype is None or len(qkv) != 3 or None in qkv[1:] + q[1:] + k[1:] or v[1:] != k[1:]:
        return None
    h_q, h_kv, d = q[1], k[1], q[2]
    info = json.loads(str(func.attrs[ROPE_ATTR]))
    rd = int(info.get("rotary_dim", d))
    if qkv[1:] != [h_q + 2 * h_kv, d] or k[2] != d or d % 8 or rd % 16 or not 0 < rd <= d:
        return None
    if (info.get("scaling") or {}).get("rope_type", "default") not in VARIANTS:
        return None
    return h_q, h_kv, d, dtype, info


def append_signature(func: tirx.PrimFunc) -> tuple[int, int, int, str] | None:
    """(h_kv, d, page size, dtype) of TVM's `tir_kv_cache_transpose_append` (MHA), else None."""
    params = list(func.params)
    if len(params) != 4 or (func.attrs is not None and MARK in func.attrs):
        return None
    buffers = [b for b in params if isinstance(b.ty, tirx.buffer.BufferType)]
    if len(buffers) != 4 or str(buffers[3].dtype) != "int32":
        return None
    dtype = _dtype_ok(buffers[:3])
    pages, k, v = (_shape(b) for b in buffers[:3])
    if dtype is None or len(pages) != 5 or len(k) != 3 or None in pages[1:] + k[1:] or v[1:] != k[1:]:
        return None
    if pages[1] != 2 or pages[2] != k[1] or pages[4] != k[2] or k[2] % 8:
        return None
    return k[1], k[2], pages[3], dtype


@tvm.transform.module_pass(opt_level=0, name="ReplaceCUDAKVKernels")
def replace_kv_kernels(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
    """Swap TVM's `fused_rope` and `tir_kv_cache_transpose_append` for ember's (same signatures).
    EMBER_CUDA_KV=0 leaves the module alone."""
    if os.environ.get(ENV, "1") == "0":
        return mod
    mod = swap_kernel(mod, ROPE_NAME,
                      lambda f: None if (sig := rope_signature(f)) is None else rope_kernel(*sig))
    return swap_kernel(mod, APPEND_NAME,
                       lambda f: None if (sig := append_signature(f)) is None else append_kernel(*sig))


__all__ = ["APPEND_NAME", "ENV", "ROPE_NAME", "append_kernel", "append_signature", "replace_kv_kernels",
           "rope_constants", "rope_kernel", "rope_signature"]
