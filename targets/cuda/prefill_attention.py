"""ember's tensor-core attention for a prefill, in place of TVM's cuda `batch_prefill_ragged_kv` and
`batch_prefill_paged_kv`.

TVM's paged KV cache attends a prefill chunk in two parts: its own new keys (the "ragged" kernel, causal) and the
sequence's cached pages (a paged kernel), merged after. TVM's ragged kernel is SIMT (no mma): at a 512-token
prompt on llama3-8b it took ~39 % of the prefill (../shared/guide/tvm-baseline-llama3-8b.md). `prefill_ragged`
has the same signature and outputs (attention output and TVM's lse: log2 domain, scores scaled by sm_scale *
log2(e)); its body launches kernels/prefill_attention.cuh (`ember::prefill::ragged`: flash attention 2 on
mma.sync, 64 query rows of one head a block) over an upper bound of the query tiles of all sequences, each block
finding its sequence from q_indptr. `prefill_paged` does the same over the cached pages of the sequences (the
first chunks of a chunked prefill, a reused prefix): `ember::prefill::paged`, the same kernel reading K and V
through the page table. TVM's paged kernel is SIMT too: at a 4096-token prompt (two 2048-token chunks) it took
~0.6 s of 0.7 (docs/measurements/2026-12-03-h200-prefill-gemm/).

Left to TVM's kernels: rotary_mode == 1 (rope inside attention: the originals are kept in the module under
INLINE_ROPE / PAGED_INLINE_ROPE and called), the sliding-window paged kernel (`..._sliding_window`), and any
dtype, head dim or signature `_signature` / `_paged_covered` do not know. EMBER_CUDA_PREFILL=0
keeps TVM's kernel everywhere (A/B runs).
"""
from __future__ import annotations

import os

import tvm
from tvm import tirx
from tvm.script import tirx as T

from ..attention_window import require_windowed, softcap_of, window_by_sign, window_of
from ..cpu.attention import _signature, swap_kernel

ENV = "EMBER_CUDA_PREFILL"
NAME = "batch_prefill_ragged_kv"
INLINE_ROPE = NAME + "_inline_rope"
PAGED = "batch_prefill_paged_kv"  # the sliding-window variant has its own name and stays TVM's
PAGED_INLINE_ROPE = PAGED + "_inline_rope"
DTYPES = ("float16", "bfloat16")
HEAD_DIMS = (64, 128, 256)
TILE_ROWS, THREADS = 64, 128  # prefill_attention.cuh's BM and block size
OPAQUE = 8  # relax OpPatternKind.kOpaque


def _ctype(dtype: str) -> str:
    return "__half" if dtype == "float16" else "__nv_bfloat16"


def kernel_name(h_q: int, h_kv: int, d: int, dtype: str, capped: bool = False) -> str:
    return f"ember::prefill::ragged<{d}, {h_kv}, {h_q // h_kv}, {_ctype(dtype)}{', true' if capped else ''}>"


def paged_kernel_name(h_q: int, h_kv: int, d: int, page_size: int, dtype: str, capped: bool = False) -> str:
    return (f"ember::prefill::paged<{d}, {h_kv}, {h_q // h_kv}, {page_size}, {_ctype(dtype)}"
            f"{', true' if capped else ''}>")


def prefill_ragged(h_q: int, h_kv: int, d: int, dtype: str, inline_rope_kernel: str = INLINE_ROPE,
                   window: int = 0, by_sign: bool = False, softcap: float = 0.0) -> tirx.PrimFunc:
    """Same signature as TVM's cuda `batch_prefill_ragged_kv`; `window` > 0: the model's sliding window (HF
    convention) as a mask (targets/attention_window.py), `by_sign`: only where sm_scale < 0; `softcap` > 0: tanh
    soft-capping of the scores."""
    name = kernel_name(h_q, h_kv, d, dtype, capped=softcap > 0)
    sign_on = 1 if by_sign else 0

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
                            T.address_of(kv_indptr[0]), output.data, lse.data, batch_size, causal, sm_scale,
                            window, sign_on, T.float32(softcap)))
    # fmt: on
    return batch_prefill_ragged_kv


def prefill_paged(h_q: int, h_kv: int, d: int, page_size: int, dtype: str,
                  inline_rope_kernel: str = PAGED_INLINE_ROPE, window: int = 0, by_sign: bool = False,
                  softcap: float = 0.0) -> tirx.PrimFunc:
    """Same signature as TVM's cuda `batch_prefill_paged_kv` (no TVM sliding window: length_info is
    last_page_len); `window`, `by_sign`, `softcap` as in prefill_ragged."""
    name = paged_kernel_name(h_q, h_kv, d, page_size, dtype, capped=softcap > 0)
    sign_on = 1 if by_sign else 0

    # fmt: off
    @T.prim_func(private=True, s_tir=True)
    def batch_prefill_paged_kv(var_q: T.handle, var_q_indptr: T.handle, var_pages: T.handle,
                               var_page_indptr: T.handle, var_page_values: T.handle, var_length_info: T.handle,
                               var_k_rope_pos_offset: T.handle, var_q_rope_position: T.handle, var_output: T.handle,
                               var_lse: T.handle, causal: T.int32, rotary_mode: T.int32, rope_scale: T.float32,
                               rope_theta: T.float32, sm_scale: T.float32):
        T.func_attr({"tirx.is_scheduled": True, "op_pattern": OPAQUE})
        batch_size, total_len, nnz_pages, max_num_pages = T.int32(), T.int32(), T.int32(), T.int32()
        pages_elem_offset = T.int64()
        q_indptr_offset, page_indptr_offset, page_values_offset = T.int32(), T.int32(), T.int32()
        k_rope_offset, q_rope_offset, length_info_offset = T.int32(), T.int32(), T.int32()
        q = T.match_buffer(var_q, (total_len, h_q, d), dtype)
        q_indptr = T.match_buffer(var_q_indptr, (batch_size + 1,), "int32", elem_offset=q_indptr_offset)
        pages = T.match_buffer(var_pages, (max_num_pages, 2, h_kv, page_size, d), dtype,
                               elem_offset=pages_elem_offset)
        page_indptr = T.match_buffer(var_page_indptr, (batch_size + 1,), "int32", elem_offset=page_indptr_offset)
        page_values = T.match_buffer(var_page_values, (nnz_pages,), "int32", elem_offset=page_values_offset)
        length_info = T.match_buffer(var_length_info, (batch_size,), "int32", elem_offset=length_info_offset)
        k_rope_pos_offset = T.match_buffer(var_k_rope_pos_offset, (batch_size,), "int32", elem_offset=k_rope_offset)
        q_rope_position = T.match_buffer(var_q_rope_position, (total_len,), "int32", elem_offset=q_rope_offset)
        output = T.match_buffer(var_output, (total_len, h_q, d), dtype)
        lse = T.match_buffer(var_lse, (total_len, h_q), "float32")
        if rotary_mode == 1:
            T.evaluate(T.call_cpacked(inline_rope_kernel, q, q_indptr, pages, page_indptr, page_values, length_info,
                                      k_rope_pos_offset, q_rope_position, output, lse, causal, rotary_mode,
                                      rope_scale, rope_theta, sm_scale))
        else:
            for bx in T.thread_binding(T.ceildiv(total_len, TILE_ROWS) + batch_size, thread="blockIdx.x"):
                for by in T.thread_binding(h_q, thread="blockIdx.y"):
                    for tx in T.thread_binding(THREADS, thread="threadIdx.x"):
                        T.evaluate(T.call_extern(
                            "int32", name, q.data, T.address_of(q_indptr[0]), T.address_of(pages[0, 0, 0, 0, 0]),
                            T.address_of(page_indptr[0]), T.address_of(page_values[0]),
                            T.address_of(length_info[0]), output.data, lse.data, batch_size, causal, sm_scale,
                            window, sign_on, T.float32(softcap)))
    # fmt: on
    return batch_prefill_paged_kv


def _paged_covered(func: tirx.PrimFunc) -> tuple[int, int, int, int, str] | None:
    """(h_q, h_kv, d, page_size, dtype) of TVM's cuda paged prefill kernel if the signature is the known one."""
    params = list(func.params)
    if len(params) != 15:
        return None
    if not all(hasattr(p, "shape") for p in params[:10]):  # 0.27: a buffer parameter carries its shape
        return None
    q, pages, length_info, out = params[0], params[2], params[5], params[8]
    dims = [d.value if isinstance(d, tirx.IntImm) else None for d in (*q.shape[1:], *pages.shape[1:])]
    if len(q.shape) != 3 or len(pages.shape) != 5 or len(length_info.shape) != 1 or None in dims:
        return None
    h_q, d, two, h_kv, page_size, d_kv = dims
    dtype = str(q.dtype)
    if two != 2 or d_kv != d or h_q % h_kv or dtype not in DTYPES or d not in HEAD_DIMS:
        return None
    if str(pages.dtype) != dtype or str(out.dtype) != dtype:
        return None
    return h_q, h_kv, d, page_size, dtype


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
    """Swap TVM's cuda ragged- and paged-prefill kernels for `prefill_ragged` and `prefill_paged`; the originals
    stay as INLINE_ROPE and PAGED_INLINE_ROPE."""
    if os.environ.get(ENV, "1") == "0":
        require_windowed(mod, (INLINE_ROPE, PAGED_INLINE_ROPE), f"{ENV}=0")
        return mod
    extra = dict(window=window_of(mod), by_sign=window_by_sign(mod), softcap=softcap_of(mod))
    mod = swap_kernel(mod, NAME, lambda f: None if (sig := _covered(f)) is None
                      else prefill_ragged(*sig, **extra), keep_as=INLINE_ROPE)
    mod = swap_kernel(mod, PAGED, lambda f: None if (sig := _paged_covered(f)) is None
                      else prefill_paged(*sig, **extra), keep_as=PAGED_INLINE_ROPE)
    require_windowed(mod, (INLINE_ROPE, PAGED_INLINE_ROPE), "cuda prefill attention")
    return mod


__all__ = ["INLINE_ROPE", "NAME", "PAGED", "PAGED_INLINE_ROPE", "kernel_name", "paged_kernel_name", "prefill_paged",
           "prefill_ragged", "replace_prefill_attention"]
