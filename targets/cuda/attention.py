"""ember's split-K ("flash decoding") decode attention over the paged KV cache, in place of TVM's cuda kernel.

TVM's `batch_decode_paged_kv` (relax/frontend/nn/llm/_decode_kernels.py) runs one block per (sequence, kv head)
and walks the whole context serially: 8 blocks on 132 SMs for llama3-8b at batch 1, ~15 us per layer at a context
of 150, growing with the context. `decode_paged` has the same signature and outputs (attention output and TVM's
lse: log2 domain, scores scaled by sm_scale * log2(e)); its body launches kernels/decode_attention.cuh:
`ember::attn::split` over (chunk, kv head, sequence) blocks, then, when the context was cut into more than one
chunk, `ember::attn::merge` over (sequence, query head), unless the split kernel merges itself (SplitConfig.fused_merge,
the default: its last block per (sequence, kv head) does it, counted on an atomic counter that resets itself). The host picks the chunk count from the batch size and the
page count (nnz_pages, a shape it knows) so that both batch 1 and long contexts fill the GPU; the partials go to a
workspace the PrimFunc allocates (TVMBackendAllocWorkspace, pooled by TVM's runtime).

Left to TVM's kernel: rotary_mode == 1 (rope inside attention: the original is kept in the module under
DECODE_INLINE_ROPE and called), the sliding-window kernel (another PrimFunc, never touched), and any dtype, head dim,
GQA group or signature `_decode_signature` does not know.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import tvm
from tvm import tirx
from tvm.script import tirx as T

from ..attention_window import require_windowed, softcap_of, window_by_sign, window_of
from ..cpu.attention import _shape, swap_kernel

ENV = "EMBER_CUDA_ATTENTION"  # "0" keeps TVM's decode kernel (for A/B runs)
NAME = "batch_decode_paged_kv"  # TVM's non-sliding-window cuda decode kernel
DECODE_INLINE_ROPE = NAME + "_inline_rope"
DTYPES = ("float16", "bfloat16")
HEAD_DIMS = (64, 128, 256)
MAX_GROUP = 8
OPAQUE = 8  # relax OpPatternKind.kOpaque


@dataclass(frozen=True)
class SplitConfig:
    warps: int = 4  # warps per split block (shared memory: 32 KB of partial rows at 4 warps)
    unroll: int = 0  # tokens in flight per lane; 0: 4 for GQA groups up to 4, else 2 (registers)
    target_blocks: int = 528  # split blocks wanted per call (4 per SM on 132 SMs)
    min_chunk_tokens: int = 32  # no chunk shorter than this many tokens (on average)
    fused_merge: bool = True  # the last split block of each (sequence, kv head) merges: one launch, no merge kernel

    def tokens_in_flight(self, group: int) -> int:
        return self.unroll or (4 if group <= 4 else 2)


def split_name(h_kv: int, group: int, d: int, page_size: int, cfg: SplitConfig, dtype: str = "float16",
               capped: bool = False) -> str:
    args = [d, h_kv, group, page_size, cfg.warps, cfg.tokens_in_flight(group)]
    if capped:  # the soft-capped instantiation names every template argument
        args += ["__half" if dtype == "float16" else "__nv_bfloat16", "true"]
    return f"ember::attn::split<{', '.join(str(a) for a in args)}>"


MAX_COUNTERS = 8192  # kMaxCounters of decode_attention.cuh


def fused_chunk_cap(cfg: SplitConfig) -> int:
    """Chunks the fused merge can weigh (its weights reuse the block's sh_o: 32 * warps slots * 8 columns)."""
    return 256 * cfg.warps


def merge_name(d: int) -> str:
    return f"ember::attn::merge<{d}>"


def decode_paged(h_q: int, h_kv: int, d: int, page_size: int, dtype: str, config: SplitConfig | None = None,
                 inline_rope_kernel: str = DECODE_INLINE_ROPE, window: int = 0, by_sign: bool = False,
                 softcap: float = 0.0) -> tirx.PrimFunc:
    """Same signature as TVM's cuda `batch_decode_paged_kv` (non-sliding-window: length_info is [B], the tokens
    of each sequence's last page). `window` > 0: the model's sliding window (HF convention), applied here to a
    cache that keeps every token (targets.window); `by_sign`: only where sm_scale < 0 (attention_window.py);
    `softcap` > 0: tanh soft-capping of the scores."""
    cfg = config or SplitConfig()
    group = h_q // h_kv
    threads = 32 * cfg.warps
    split = split_name(h_kv, group, d, page_size, cfg, dtype, capped=softcap > 0)
    merge = merge_name(d)
    min_pages = -(-cfg.min_chunk_tokens // page_size)
    cap = fused_chunk_cap(cfg)
    fused_on = 1 if cfg.fused_merge else 0
    # the most pages a window of tokens spans (a kernel for local and global layers plans for the global ones)
    window_pages = -(-window // page_size) + 1 if window > 0 and not by_sign else 0
    sign_on = 1 if by_sign else 0

    # fmt: off
    @T.prim_func(private=True, s_tir=True)
    def batch_decode_paged_kv(Q_handle: T.handle, pages_handle: T.handle, page_table_indptr_handle: T.handle,
                              page_table_values_handle: T.handle, var_length_info: T.handle,
                              k_rope_pos_offset_handle: T.handle, q_rope_position_handle: T.handle,
                              output_handle: T.handle, lse_handle: T.handle, rotary_mode: T.int32,
                              rope_scale: T.float32, rope_theta: T.float32, sm_scale: T.float32):
        T.func_attr({"tirx.is_scheduled": True, "op_pattern": OPAQUE})
        B, nnz_pages, max_num_pages = T.int32(), T.int32(), T.int32()
        pages_elem_offset = T.int64()
        page_indptr_elem_offset, page_values_elem_offset = T.int32(), T.int32()
        k_rope_pos_offset_elem_offset, q_rope_position_elem_offset = T.int32(), T.int32()
        length_info_elem_offset = T.int32()
        Q = T.match_buffer(Q_handle, (B, h_q, d), dtype)
        pages = T.match_buffer(pages_handle, (max_num_pages, 2, h_kv, page_size, d), dtype,
                               elem_offset=pages_elem_offset)
        page_table_indptr = T.match_buffer(page_table_indptr_handle, (B + 1,), "int32",
                                           elem_offset=page_indptr_elem_offset)
        page_table_values = T.match_buffer(page_table_values_handle, (nnz_pages,), "int32",
                                           elem_offset=page_values_elem_offset)
        k_rope_pos_offset = T.match_buffer(k_rope_pos_offset_handle, (B,), "int32",
                                           elem_offset=k_rope_pos_offset_elem_offset)
        q_rope_position = T.match_buffer(q_rope_position_handle, (B,), "int32",
                                         elem_offset=q_rope_position_elem_offset)
        output = T.match_buffer(output_handle, (B, h_q, d), dtype)
        lse = T.match_buffer(lse_handle, (B, h_q), "float32")
        length_info = T.match_buffer(var_length_info, (B,), "int32", elem_offset=length_info_elem_offset)
        # chunks per (sequence, kv head): enough blocks to fill the GPU, no chunk shorter than min_pages pages
        visible_pages: T.let[T.int32] = _visible_pages(nnz_pages, B, window_pages)
        chunks: T.let[T.int32] = T.max(1, T.min(T.ceildiv(cfg.target_blocks, B * h_kv), T.ceildiv(visible_pages, B * min_pages)))
        ws_o = T.alloc_buffer((B * h_q * chunks * d,), "float32")
        ws_ml = T.alloc_buffer((B * h_q * chunks * 2,), "float32")
        fused: T.let[T.int32] = T.Select(B * h_kv <= MAX_COUNTERS and chunks <= cap, fused_on, 0)
        if rotary_mode == 1:
            T.evaluate(T.call_cpacked(inline_rope_kernel, Q, pages, page_table_indptr, page_table_values,
                                      length_info, k_rope_pos_offset, q_rope_position, output, lse, rotary_mode,
                                      rope_scale, rope_theta, sm_scale))
        else:
            assert pages_elem_offset % 8 == 0, "batch_decode_paged_kv: pages must start 16-byte aligned"
            for c in T.thread_binding(chunks, thread="blockIdx.x"):
                for hk in T.thread_binding(h_kv, thread="blockIdx.y"):
                    for b in T.thread_binding(B, thread="blockIdx.z"):
                        for tx in T.thread_binding(threads, thread="threadIdx.x"):
                            T.evaluate(T.call_extern(
                                "int32", split, Q.data, T.address_of(pages[0, 0, 0, 0, 0]),
                                T.address_of(page_table_indptr[0]), T.address_of(page_table_values[0]),
                                T.address_of(length_info[0]), output.data, lse.data, ws_o.data, ws_ml.data, chunks,
                                sm_scale, fused, window, sign_on, T.float32(softcap)))
            if chunks > 1 and fused == 0:
                for bh in T.thread_binding(B * h_q, thread="blockIdx.x"):
                    for tx in T.thread_binding(d, thread="threadIdx.x"):
                        T.evaluate(T.call_extern("int32", merge, ws_o.data, ws_ml.data, output.data, lse.data,
                                                 chunks))
    # fmt: on
    return batch_decode_paged_kv


def _visible_pages(nnz_pages: tirx.PrimExpr, batch: tirx.PrimExpr, window_pages: int) -> tirx.PrimExpr:
    """The pages a decode call reads: all of them, or at most `window_pages` a sequence under a sliding window."""
    return tirx.min(nnz_pages, batch * window_pages) if window_pages else nnz_pages


def _decode_signature(func: tirx.PrimFunc) -> tuple[int, int, int, int, str] | None:
    """(h_q, h_kv, d, page_size, dtype) of TVM's cuda decode kernel where this kernel covers it, else None."""
    params = list(func.params)
    if len(params) != 13:
        return None
    buffers, scalars = params[:9], params[9:]
    if not all(isinstance(b.ty, tirx.buffer.BufferType) for b in buffers):
        return None
    if any(isinstance(s.ty, tirx.buffer.BufferType) or str(s.ty).removeprefix("T.") != t
           for s, t in zip(scalars, ("int32", "float32", "float32", "float32"))):
        return None
    q, pages, out, lse = (_shape(buffers[i]) for i in (0, 1, 7, 8))
    if len(q) != 3 or len(pages) != 5 or len(out) != 3 or len(lse) != 2 or len(buffers[4].shape) != 1:
        return None
    if None in q[1:] + pages[1:] or out[1:] != q[1:] or pages[1] != 2:
        return None
    dtype = str(buffers[0].dtype)
    if dtype not in DTYPES or str(buffers[1].dtype) != dtype or str(buffers[7].dtype) != dtype:
        return None
    if str(buffers[8].dtype) != "float32" or any(str(buffers[i].dtype) != "int32" for i in (2, 3, 4, 5, 6)):
        return None
    h_q, d = q[1], q[2]
    h_kv, page_size = pages[2], pages[3]
    if pages[4] != d or d not in HEAD_DIMS or h_q % h_kv or not 1 <= h_q // h_kv <= MAX_GROUP:
        return None
    if not 1 <= page_size <= 1024:
        return None
    return h_q, h_kv, d, page_size, dtype


@tvm.transform.module_pass(opt_level=0, name="ReplaceCUDADecodeAttention")
def replace_decode_attention(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
    """Swap TVM's cuda decode kernel for `decode_paged` (same signature); the original stays in the module as
    DECODE_INLINE_ROPE for rotary_mode == 1. EMBER_CUDA_ATTENTION=0 leaves the module alone."""
    if os.environ.get(ENV, "1") == "0":
        require_windowed(mod, (DECODE_INLINE_ROPE,), f"{ENV}=0")
        return mod
    extra = dict(window=window_of(mod), by_sign=window_by_sign(mod), softcap=softcap_of(mod))
    mod = swap_kernel(mod, NAME, lambda f: None if (sig := _decode_signature(f)) is None
                      else decode_paged(*sig, **extra), keep_as=DECODE_INLINE_ROPE)
    require_windowed(mod, (DECODE_INLINE_ROPE,), "cuda decode attention")
    return mod


__all__ = ["DECODE_INLINE_ROPE", "NAME", "SplitConfig", "decode_paged", "replace_decode_attention"]
