"""ember's tensor-core attention for the new tokens of a prefill, in place of TVM's cuda `batch_prefill_ragged_kv`.

TVM's paged KV cache attends a prefill chunk in two parts: its own new keys (the "ragged" kernel, causal) and the
sequence's cached pages (a paged kernel), merged after. TVM's ragged kernel is SIMT (no mma): at a 512-token
prompt on llama3-8b it took ~39 % of the prefill (../shared/guide/tvm-baseline-llama3-8b.md). `prefill_ragged`
has the same signature and outputs (attention output and TVM's lse: log2 domain, scores scaled by sm_scale *
log2(e)); its body launches kernels/prefill_attention.cuh (`ember::prefill::ragged`: flash attention 2 on
mma.sync, 64 query rows of one head a block) over an upper bound of the query tiles of all sequences, each block
finding its sequence from q_indptr.

Left to TVM's kernel: rotary_mode == 1 (rope inside attention: the original is kept in the module under
INLINE_ROPE and called), and any dtype, head dim or signature `_signature` does not know. EMBER_CUDA_PREFILL=0
keeps TVM's kernel everywhere (A/B runs).
"""
from __future__ import annotations

import os

import tvm
from tvm import tirx
from tvm.script import tirx as T

from ..cpu.attention import _signature, swap_kernel

ENV = "EMBER_CUDA_PREFILL"
NAME = "batch_prefill_ragged_kv"
INLINE_ROPE = NAME + "_inline_rope"
DTYPES = ("float16", "bfloat16")
HEAD_DIMS = (64, 128)
TILE_ROWS, THREADS = 64, 128  # prefill_attention.cuh's BM and block size
OPAQUE = 8  # relax OpPatternKind.kOpaque


def kernel_name(h_q: int, h_kv: int, d: int, dtype: str) -> str:
    ctype = "__half" if dtype == "float16" else "__nv_bfloat16"
    return f"ember::prefill::ragged<{d}, {h_kv}, {h_q // h_kv}, {ctype}>"


def prefill_ragged(h_q: int, h_kv: int, d: int, dtype: str, inline_rope_kernel: str = INLINE_ROPE) -> tirx.PrimFunc:
    """Same signature as TVM's cuda `batch_prefill_ragged_kv`."""
    name = kernel_name(h_q, h_kv, d, dtype)

    # fmt: off
    @T.prim_func(private=True, s_tir=True)
    def batch_prefill_ragged_kv(var_q: T.handle, var_q_indptr: T.handle, var_k: T.handle, var_v: T.handle,
                                var_kv_indptr: T.handle, var_q_rope_position: T.handle,
                                var_k_rope_pos_offset: T.handle, var_output: T.handle, var_lse: T.handle,
                                causal: T.int32, rotary_mode: T.int32, rope_scale: T.float32, rope_theta: T.float32,
                                sm_scale: T.float32):
        T.func_attr({"tirx.is_scheduled": True, "op_pattern": OPAQUE})
        qo_len, batch_size, kv_len = T.int32(), T.int32(), T.int32()
        q_indptr_offset, kv_indptr_offset = T.int32(), T.int32()
        q = T.match_buffer(var_q, (qo_len, h_q, d), dtype)
        q_indptr = T.match_buffer(var_q_indptr, (batch_size + 1,), "int32", elem_offset=q_indptr_offset)
        k = T.match_buffer(var_k, (kv_len, h_kv, d), dtype)
        v = T.match_buffer(var_v, (kv_len, h_kv, d), dtype)
        kv_indptr = T.match_buffer(var_kv_indptr, (batch_size + 1,), "int32", elem_offset=kv_indptr_offset)
        q_rope_position = T.match_buffer(var_q_rope_position, (qo_len,), "int32", offset_factor=1)
        k_rope_pos_offset = T.match_buffer(var_k_rope_pos_offset, (batch_size,), "int32", offset_factor=1)
        output = T.match_buffer(var_output, (qo_len, h_q, d), dtype)
        lse = T.match_buffer(var_lse, (qo_len, h_q), "float32")
        if rotary_mode == 1:
            T.evaluate(T.call_cpacked(inline_rope_kernel, q, q_indptr, k, v, kv_indptr, q_rope_position,
                                      k_rope_pos_offset, output, lse, causal, rotary_mode, rope_scale, rope_theta,
                                      sm_scale))
        else:
            for bx in T.thread_binding(T.ceildiv(qo_len, TILE_ROWS) + batch_size, thread="blockIdx.x"):
                for by in T.thread_binding(h_q, thread="blockIdx.y"):
                    for tx in T.thread_binding(THREADS, thread="threadIdx.x"):
                        T.evaluate(T.call_extern(
                            "int32", name, q.data, T.address_of(q_indptr[0]), k.data, v.data,
                            T.address_of(kv_indptr[0]), output.data, lse.data, batch_size, causal, sm_scale))
    # fmt: on
    return batch_prefill_ragged_kv


def _covered(func: tirx.PrimFunc) -> tuple[int, int, int, str] | None:
    sig = _signature(func)
    if sig is None:
        return None
    h_q, h_kv, d, dtype = sig
    if dtype not in DTYPES or d not in HEAD_DIMS or str(func.params[7].dtype) != dtype:
        return None
    return sig


@tvm.transform.module_pass(opt_level=0, name="ReplaceCUDAPrefillAttention")
def replace_prefill_attention(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
    """Swap TVM's cuda ragged-prefill kernel for `prefill_ragged`; the original stays as INLINE_ROPE."""
    if os.environ.get(ENV, "1") == "0":
        return mod
    return swap_kernel(mod, NAME, lambda f: None if (sig := _covered(f)) is None else prefill_ragged(*sig),
                       keep_as=INLINE_ROPE)


__all__ = ["INLINE_ROPE", "NAME", "kernel_name", "prefill_ragged", "replace_prefill_attention"]
