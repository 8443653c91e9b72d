"""A parallel, vectorized replacement for TVM's cpu ragged-prefill attention kernel.

TVM's paged KV cache (relax.frontend.nn.llm.kv_cache) builds `batch_prefill_ragged_kv` for cpu as one serial
loop nest: one thread, scalar dot products, a [kv_len, heads] score buffer per query row. At 512 prompt tokens
it took about as long as all the linear layers together. This kernel computes the same thing (same signature,
same outputs: attention output and its log2-sum-exp `lse`) with:
  * the (head, query row) pairs of each sequence as one parallel loop, head-major so that the causal triangle
    splits evenly between threads;
  * an online softmax over blocks of 32 keys (no score buffer): K is transposed once per call to
    [h_kv, D, kv] so that a block's scores are vector FMAs over keys, exp2 is a vectorized polynomial, then
    acc[D] += p_j * V[j] over D in vector lanes (see `prefill_ragged`).
At 512 tokens (SmolLM2, 9 heads x 64) it needs ~10 ms of cpu per layer instead of ~85 ms.
Scores use TVM's convention: log2 domain, q.k * sm_scale * log2(e). With rope inside attention (`rotary_mode ==
1`: TVM does that for sliding-window caches, with model-specific rope scaling this kernel cannot see), it calls
TVM's original kernel, kept in the module under INLINE_ROPE.
"""
from __future__ import annotations

import json
import math

import tvm
from tvm import tirx

from ..attention_window import require_windowed, softcap_of, window_by_sign, window_of
from tvm.script import tirx as T

LOG2E = math.log2(math.e)
NAME = "batch_prefill_ragged_kv"
INLINE_ROPE = NAME + "_inline_rope"  # TVM's kernel, kept in the module for rotary_mode == 1
PAGED_NAME = "batch_prefill_paged_kv_cpu"  # the non-sliding-window kernel; the sliding-window one stays TVM's
PAGED_INLINE_ROPE = PAGED_NAME + "_inline_rope"


# exp2 on [-126, 0] without a libm call (calls spill every vector register): 2^x = 2^n * 2^f, n = round(x),
# f in [-0.5, 0.5], 2^f = 1 + f * P(f) with Cephes' exp2f coefficients (relative error ~2e-7).
_EXP2_P = (1.535336188319500e-4, 1.339887440266574e-3, 9.618437357674640e-3, 5.550332471162809e-2,
           2.402264791363012e-1, 6.931472028550421e-1)


def _exp2(x):
    x = T.max(x, T.float32(-126))
    n = T.floor(x + T.float32(0.5))
    f = x - n
    poly = T.float32(_EXP2_P[0])
    for c in _EXP2_P[1:]:
        poly = poly * f + T.float32(c)
    return (f * poly + T.float32(1)) * T.reinterpret("float32", T.shift_left(T.Cast("int32", n) + 127, 23))


def _attend_macro(h_q: int, h_kv: int, d: int, dtype: str, block: int, phases: int, window: int,
                  by_sign: bool = False, softcap: float = 0.0):
    """The attention of one (query head, query row) of sequence b over its keys kv0 .. kv0 + n_kv of `kt` (keys
    transposed, [h_kv, d, keys + block]) and `vals` ([keys, h_kv, d]): shared by the ragged and the paged kernel.
    Row qi sits at position pos0 + qi among the keys (pos0 = n_kv - q_len when causal: the keys end with the
    chunk's own; n_kv otherwise: the cached keys before a chunk); it sees the keys before pos0 + qi + 1 (causal)
    and, with a sliding window W > 0 (HF convention), none before pos0 + qi - W + 1. `by_sign`: the window applies
    only to calls whose sm_scale is negative (the windowed layers of a model that has global ones too;
    attention_window.WINDOW_BY_SIGN_ATTR), and |sm_scale| is the scale. `softcap` > 0: scores s = q.k * sm_scale
    become softcap * tanh(s / softcap) before the softmax (Gemma 2)."""
    group = h_q // h_kv
    lanes = 8 if d % 8 == 0 else math.gcd(4, d)
    chunks = d // lanes

    def f32(x):
        return T.Cast("float32", x)

    assert not softcap or phases == 1, "soft-capping needs each score whole (one phase)"

    def lowest_key(pos, sm_scale):
        if window <= 0:
            return T.int32(0)
        low = T.max(pos - window + 1, 0)
        return T.if_then_else(sm_scale < T.float32(0), low, 0) if by_sign else low

    def score_scale(sm_scale):  # q is pre-multiplied by it: scores in the log2 domain, or natural before a cap
        scale = T.fabs(sm_scale) if by_sign else sm_scale
        return scale if softcap else scale * T.float32(LOG2E)

    def score(x):
        if not softcap:
            return x
        return T.float32(softcap * LOG2E) * T.tanh(x * T.float32(1.0 / softcap))

    # fmt: off
    @T.macro
    def attend(q, q_indptr, kt, vals, output, lse, b, hq, kv0, n_kv, causal, sm_scale):
        with T.sblock("attn"):
            T.reads(q[0:q.shape[0], 0:h_q, 0:d], kt[0:h_kv, 0:d, 0:kt.shape[2]], vals[0:vals.shape[0], 0:h_kv, 0:d],
                    q_indptr[0:q_indptr.shape[0]])
            T.writes(output[0:q.shape[0], 0:h_q, 0:d], lse[0:q.shape[0], 0:h_q])
            # default scope on purpose: small "global" allocations become stack allocas (registers),
            # "local" ones TVMBackendAllocWorkspace calls (see matmul_schedule.py)
            qv = T.sblock_alloc_buffer((d,), "float32")
            acc = T.sblock_alloc_buffer((d,), "float32")
            part = T.sblock_alloc_buffer((phases, block), "float32")
            p = T.sblock_alloc_buffer((block,), "float32")
            st = T.sblock_alloc_buffer((4,), "float32")  # max, sum, new max, rescale
            q_len: T.let[T.int32] = q_indptr[b + 1] - q_indptr[b]
            h: T.let[T.int32] = hq // q_len
            qi: T.let[T.int32] = hq % q_len
            row: T.let[T.int32] = q_indptr[b] + qi
            hk: T.let[T.int32] = h // group
            pos: T.let[T.int32] = T.if_then_else(causal > 0, n_kv - q_len, n_kv) + qi
            n_keys: T.let[T.int32] = T.if_then_else(causal > 0, T.min(pos + 1, n_kv), n_kv)
            low: T.let[T.int32] = lowest_key(pos, sm_scale)
            scale: T.let[T.float32] = score_scale(sm_scale)
            for i in range(d):
                qv[i] = f32(q[row, h, i]) * scale
            for c in T.unroll(chunks):  # constant indices only, so that acc lives in registers
                for l in T.vectorized(lanes):
                    acc[c * lanes + l] = T.float32(0)
            st[0] = T.float32(-50000)  # TVM's initial max and sum
            st[1] = T.float32(1)
            for jb in range(low // block, (n_keys + block - 1) // block):
                for ph in T.unroll(phases):
                    for l in T.vectorized(block):
                        part[ph, l] = T.float32(0)
                for i0 in range(d // phases):
                    for ph in T.unroll(phases):
                        for l in T.vectorized(block):
                            part[ph, l] = part[ph, l] + qv[i0 * phases + ph] * kt[hk, i0 * phases + ph, kv0 + jb * block + l]
                for l in T.vectorized(block):
                    p[l] = T.Select(jb * block + l < n_keys and jb * block + l >= low, score(part[0, l]), T.float32(-1e30))
                for ph in T.unroll(1, phases):
                    for l in T.vectorized(block):
                        p[l] = p[l] + part[ph, l]
                st[2] = st[0]
                for l in T.unroll(block):
                    st[2] = T.max(st[2], p[l])
                st[3] = _exp2(st[0] - st[2])
                st[0] = st[2]
                for l in T.vectorized(block):
                    p[l] = _exp2(p[l] - st[2])
                st[1] = st[1] * st[3]
                for c in T.unroll(chunks):
                    for l in T.vectorized(lanes):
                        acc[c * lanes + l] = acc[c * lanes + l] * st[3]
                for jj in range(T.min(block, n_keys - jb * block)):
                    st[1] = st[1] + p[jj]
                    for c in T.unroll(chunks):
                        for l in T.vectorized(lanes):
                            acc[c * lanes + l] = acc[c * lanes + l] + f32(vals[kv0 + jb * block + jj, hk, c * lanes + l]) * p[jj]
            for c in T.unroll(chunks):
                for l in T.vectorized(lanes):
                    output[row, h, c * lanes + l] = T.Cast(dtype, acc[c * lanes + l] / st[1])
            lse[row, h] = st[0] + T.log2(st[1])
    # fmt: on
    return attend


def prefill_ragged(h_q: int, h_kv: int, d: int, dtype: str, inline_rope_kernel: str = INLINE_ROPE,
                   block: int = 32, phases: int = 1, window: int = 0, by_sign: bool = False,
                   softcap: float = 0.0) -> tirx.PrimFunc:
    """Keys are handled `block` at a time: K is first transposed to [h_kv, d, kv] so that the scores of a block
    are vector FMAs over keys (block / lanes independent chains, times `phases` interleaved partial sums over
    d), the block's exp2 is vectorized, then acc[D] += p_j * V[j] (vector over D). 32 x 1 keeps the score
    chains and the D = 64 accumulator in the 16 AVX2 registers (more spills them). `window` > 0: the model's
    sliding window (HF convention), applied here to a cache that keeps every token (targets.attention_window)."""
    phases = 1 if softcap else math.gcd(phases, d)
    attend = _attend_macro(h_q, h_kv, d, dtype, block, phases, window, by_sign, softcap)

    def f32(x):
        return T.Cast("float32", x)

    # fmt: off
    @T.prim_func(private=True, s_tir=True)
    def attention(var_q: T.handle, var_q_indptr: T.handle, var_k: T.handle, var_v: T.handle,
                  var_kv_indptr: T.handle, var_q_rope_position: T.handle, var_k_rope_pos_offset: T.handle,
                  var_output: T.handle, var_lse: T.handle, causal: T.int32, rotary_mode: T.int32,
                  rope_scale: T.float32, rope_theta: T.float32, sm_scale: T.float32):
        T.func_attr({"op_pattern": 8, "tirx.is_scheduled": True, "tirx.noalias": True})
        qo_len, batch_size, kv_len = T.int32(), T.int32(), T.int32()
        q = T.match_buffer(var_q, (qo_len, h_q, d), dtype)
        q_indptr = T.match_buffer(var_q_indptr, (batch_size + 1,), "int32", offset_factor=1)
        k = T.match_buffer(var_k, (kv_len, h_kv, d), dtype)
        v = T.match_buffer(var_v, (kv_len, h_kv, d), dtype)
        kv_indptr = T.match_buffer(var_kv_indptr, (batch_size + 1,), "int32", offset_factor=1)
        q_rope_position = T.match_buffer(var_q_rope_position, (qo_len,), "int32", offset_factor=1)
        k_rope_pos_offset = T.match_buffer(var_k_rope_pos_offset, (batch_size,), "int32", offset_factor=1)
        output = T.match_buffer(var_output, (qo_len, h_q, d), dtype)
        lse = T.match_buffer(var_lse, (qo_len, h_q), "float32")
        kt = T.sblock_alloc_buffer((h_kv, d, kv_len + block), "float32")  # keys transposed, zero tail
        if rotary_mode == 1:  # rope inside attention (sliding-window caches): TVM's own kernel, kept as is
            T.evaluate(T.call_cpacked(inline_rope_kernel, q, q_indptr, k, v, kv_indptr, q_rope_position,
                                      k_rope_pos_offset, output, lse, causal, rotary_mode, rope_scale, rope_theta,
                                      sm_scale))
        else:
            for b in range(batch_size):
                for hd in T.parallel(h_kv * d):
                    with T.sblock("transpose_k"):
                        T.reads(k[0:kv_len, 0:h_kv, 0:d], kv_indptr[0:batch_size + 1])
                        T.writes(kt[0:h_kv, 0:d, 0:kv_len + block])
                        for j in range(kv_indptr[b + 1] - kv_indptr[b]):
                            kt[hd // d, hd % d, kv_indptr[b] + j] = f32(k[kv_indptr[b] + j, hd // d, hd % d])
                        if b == batch_size - 1:
                            for j in range(block):
                                kt[hd // d, hd % d, kv_len + j] = T.float32(0)
            for b in range(batch_size):
                for hq in T.parallel(h_q * (q_indptr[b + 1] - q_indptr[b])):
                    attend(q, q_indptr, kt, v, output, lse, b, hq, kv_indptr[b], kv_indptr[b + 1] - kv_indptr[b],
                           causal, sm_scale)
    # fmt: on
    return attention


def _gather_macro(h_kv: int, d: int, page_size: int, block: int):
    """Every cached key and value of the page table, to float32: keys transposed into kt [h_kv, d, slots + block]
    (a zero tail of one block), values into vals [slots, h_kv, d]; slot j is page_values[j // page_size]'s row
    j % page_size. Shared by the paged prefill and the 16-bit decode."""

    def f32(x):
        return T.Cast("float32", x)

    # fmt: off
    @T.macro
    def gather(pages, page_values, kt, vals, max_num_pages, nnz_pages):
        for hd in T.parallel(h_kv * d):
            with T.sblock("gather"):
                T.reads(pages[0:max_num_pages, 0:2, 0:h_kv, 0:page_size, 0:d], page_values[0:nnz_pages])
                T.writes(kt[0:h_kv, 0:d, 0:nnz_pages * page_size + block], vals[0:nnz_pages * page_size, 0:h_kv, 0:d])
                for j in range(nnz_pages * page_size):
                    kt[hd // d, hd % d, j] = f32(pages[page_values[j // page_size], 0, hd // d, j % page_size, hd % d])
                    vals[j, hd // d, hd % d] = f32(pages[page_values[j // page_size], 1, hd // d, j % page_size, hd % d])
                for j in range(block):
                    kt[hd // d, hd % d, nnz_pages * page_size + j] = T.float32(0)
    # fmt: on
    return gather


def prefill_paged(h_q: int, h_kv: int, d: int, page_size: int, dtype: str,
                  inline_rope_kernel: str = PAGED_INLINE_ROPE, block: int = 32, window: int = 0,
                  by_sign: bool = False, softcap: float = 0.0) -> tirx.PrimFunc:
    """Same signature as TVM's cpu `batch_prefill_paged_kv_cpu` (no TVM sliding window: length_info is the
    tokens of each sequence's last page), computed as `prefill_ragged` does: each sequence's cached keys are
    first gathered from their pages, transposed ([h_kv, d, keys]), and its values copied to one contiguous
    buffer; TVM's kernel is one serial scalar loop. `window`, `by_sign`, `softcap` as in prefill_ragged."""
    attend = _attend_macro(h_q, h_kv, d, dtype, block, 1, window, by_sign, softcap)
    gather = _gather_macro(h_kv, d, page_size, block)

    # fmt: off
    @T.prim_func(private=True, s_tir=True)
    def attention(var_q: T.handle, var_q_indptr: T.handle, var_pages: T.handle, var_page_indptr: T.handle,
                  var_page_values: T.handle, var_length_info: T.handle, var_k_rope_pos_offset: T.handle,
                  var_q_rope_position: T.handle, var_output: T.handle, var_lse: T.handle, causal: T.int32,
                  rotary_mode: T.int32, rope_scale: T.float32, rope_theta: T.float32, sm_scale: T.float32):
        T.func_attr({"op_pattern": 8, "tirx.is_scheduled": True, "tirx.noalias": True})
        batch_size, total_len, nnz_pages, max_num_pages = T.int32(), T.int32(), T.int32(), T.int32()
        q = T.match_buffer(var_q, (total_len, h_q, d), dtype)
        q_indptr = T.match_buffer(var_q_indptr, (batch_size + 1,), "int32", offset_factor=1)
        pages = T.match_buffer(var_pages, (max_num_pages, 2, h_kv, page_size, d), dtype)
        page_indptr = T.match_buffer(var_page_indptr, (batch_size + 1,), "int32", offset_factor=1)
        page_values = T.match_buffer(var_page_values, (nnz_pages,), "int32", offset_factor=1)
        length_info = T.match_buffer(var_length_info, (batch_size,), "int32", offset_factor=1)
        k_rope_pos_offset = T.match_buffer(var_k_rope_pos_offset, (batch_size,), "int32", offset_factor=1)
        q_rope_position = T.match_buffer(var_q_rope_position, (total_len,), "int32", offset_factor=1)
        output = T.match_buffer(var_output, (total_len, h_q, d), dtype)
        lse = T.match_buffer(var_lse, (total_len, h_q), "float32")
        # key slot j of sequence b: page_indptr[b] * page_size + j
        kt = T.sblock_alloc_buffer((h_kv, d, nnz_pages * page_size + block), "float32")  # keys transposed
        vals = T.sblock_alloc_buffer((nnz_pages * page_size, h_kv, d), "float32")
        if rotary_mode == 1:  # rope inside attention (sliding-window caches): TVM's own kernel, kept as is
            T.evaluate(T.call_cpacked(inline_rope_kernel, q, q_indptr, pages, page_indptr, page_values,
                                      length_info, k_rope_pos_offset, q_rope_position, output, lse, causal,
                                      rotary_mode, rope_scale, rope_theta, sm_scale))
        else:
            gather(pages, page_values, kt, vals, max_num_pages, nnz_pages)
            for b in range(batch_size):
                for hq in T.parallel(h_q * (q_indptr[b + 1] - q_indptr[b])):
                    attend(q, q_indptr, kt, vals, output, lse, b, hq, page_indptr[b] * page_size,
                           T.if_then_else(page_indptr[b + 1] > page_indptr[b],
                                          (page_indptr[b + 1] - page_indptr[b] - 1) * page_size + length_info[b], 0),
                           causal, sm_scale)
    # fmt: on
    return attention


def _shape(buffer) -> list[int | None]:
    return [int(x) if isinstance(x, (int, tirx.IntImm)) else None for x in buffer.shape]


def _signature(func: tirx.PrimFunc) -> tuple[int, int, int, str] | None:
    """(h_q, h_kv, d, dtype) of a TVM cpu ragged-prefill kernel, or None if the signature is not the one known."""
    params = list(func.params)
    if len(params) != 14 or not all(hasattr(p, "shape") for p in params[:9]):
        return None
    q, k, v, out = (_shape(params[i]) for i in (0, 2, 3, 7))
    if len(q) != 3 or len(k) != 3 or q[1:] != out[1:] or k[1:] != v[1:] or None in q[1:] + k[1:]:
        return None
    h_q, d, h_kv = q[1], q[2], k[1]
    if k[2] != d or h_q % h_kv or params[0].dtype != params[2].dtype:
        return None
    return h_q, h_kv, d, str(params[0].dtype)


def swap_kernel(mod: tvm.IRModule, name: str, make, keep_as: str | None = None) -> tvm.IRModule:
    """Replace the PrimFunc `name` by `make(original)` (None: leave it), keeping its target and symbol; with
    `keep_as`, the original stays in the module under that name (the replacement calls it for paths it leaves to
    TVM). A module already holding `keep_as` was swapped before."""
    names = [g.name_hint for g in mod.get_global_vars()]
    if keep_as is not None and keep_as in names:
        return mod
    for gv, func in list(mod.functions_items()):
        if gv.name_hint != name or not isinstance(func, tirx.PrimFunc):
            continue
        new = make(func)
        if new is None:
            continue
        if func.attrs is not None and "target" in func.attrs:
            new = new.with_attr("target", func.attrs["target"])
        mod[gv] = new.with_attr("global_symbol", name)
        if keep_as is not None:
            mod[tvm.ir.GlobalVar(keep_as)] = func.with_attr("global_symbol", keep_as)
    return mod


@tvm.transform.module_pass(opt_level=0, name="ReplaceCPUPrefillAttention")
def replace_prefill_attention(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
    """Swap TVM's serial cpu ragged- and paged-prefill kernels for `prefill_ragged` and `prefill_paged` (same
    signatures); the originals stay in the module as INLINE_ROPE and PAGED_INLINE_ROPE for rotary_mode == 1."""
    extra = dict(window=window_of(mod), by_sign=window_by_sign(mod), softcap=softcap_of(mod))
    mod = swap_kernel(mod, NAME, lambda f: None if (sig := _signature(f)) is None
                      else prefill_ragged(*sig, **extra), keep_as=INLINE_ROPE)
    mod = swap_kernel(mod, PAGED_NAME, lambda f: None if (sig := _paged_signature(f)) is None
                      else prefill_paged(*sig, **extra), keep_as=PAGED_INLINE_ROPE)
    require_windowed(mod, (INLINE_ROPE, PAGED_INLINE_ROPE), "cpu prefill attention")
    return mod


def _paged_signature(func: tirx.PrimFunc) -> tuple[int, int, int, int, str] | None:
    """(h_q, h_kv, d, page_size, dtype) of TVM's cpu paged-prefill kernel, or None if it is not the one known."""
    params = list(func.params)
    if len(params) != 15 or not all(hasattr(p, "shape") for p in params[:10]):
        return None
    q, pages, length_info, out = _shape(params[0]), _shape(params[2]), params[5], _shape(params[8])
    if len(q) != 3 or len(pages) != 5 or len(length_info.shape) != 1 or q[1:] != out[1:] or None in q[1:] + pages[1:]:
        return None
    h_q, d = q[1], q[2]
    two, h_kv, page_size, d_kv = pages[1:]
    if two != 2 or d_kv != d or h_q % h_kv or params[0].dtype != params[2].dtype:
        return None
    return h_q, h_kv, d, page_size, str(params[0].dtype)


# ---------------------------------------------------------------------------------------------------- decode
DECODE_NAME = "batch_decode_paged_kv_cpu"  # the non-sliding-window kernel; the sliding-window one stays TVM's
DECODE_INLINE_ROPE = DECODE_NAME + "_inline_rope"


def decode_paged(h_q: int, h_kv: int, d: int, page_size: int, inline_rope_kernel: str = DECODE_INLINE_ROPE,
                 window: int = 0, by_sign: bool = False, softcap: float = 0.0) -> tirx.PrimFunc:
    """Same signature as TVM's cpu decode kernel; the body calls ember_decode_attention (native/attention.c),
    parallel over (sequence, head) pairs. rotary_mode == 1 (rope inside attention) calls TVM's kernel.
    `window`, `by_sign` and `softcap` as in prefill_ragged."""

    def call_window(sm_scale):
        return T.if_then_else(sm_scale < T.float32(0), window, 0) if by_sign and window > 0 else T.int32(window)

    def call_scale(sm_scale):
        return T.fabs(sm_scale) if by_sign else sm_scale

    # fmt: off
    @T.prim_func(private=True, s_tir=True)
    def decode(Q_handle: T.handle, pages_handle: T.handle, page_table_indptr_handle: T.handle,
               page_table_values_handle: T.handle, var_length_info: T.handle, k_rope_pos_offset_handle: T.handle,
               q_rope_position_handle: T.handle, output_handle: T.handle, lse_handle: T.handle,
               rotary_mode: T.int32, rope_scale: T.float32, rope_theta: T.float32, sm_scale: T.float32):
        T.func_attr({"tirx.is_scheduled": True, "op_pattern": 8})
        B, nnz_pages, max_num_pages = T.int32(), T.int32(), T.int32()
        Q = T.match_buffer(Q_handle, (B, h_q, d), "float32")
        pages = T.match_buffer(pages_handle, (max_num_pages, 2, h_kv, page_size, d), "float32")
        page_table_indptr = T.match_buffer(page_table_indptr_handle, (B + 1,), "int32", offset_factor=1)
        page_table_values = T.match_buffer(page_table_values_handle, (nnz_pages,), "int32", offset_factor=1)
        length_info = T.match_buffer(var_length_info, (B,), "int32", offset_factor=1)
        k_rope_pos_offset = T.match_buffer(k_rope_pos_offset_handle, (B,), "int32", offset_factor=1)
        q_rope_position = T.match_buffer(q_rope_position_handle, (B,), "int32", offset_factor=1)
        output = T.match_buffer(output_handle, (B, h_q, d), "float32")
        lse = T.match_buffer(lse_handle, (B, h_q), "float32")
        if rotary_mode == 1:
            T.evaluate(T.call_cpacked(inline_rope_kernel, Q, pages, page_table_indptr, page_table_values,
                                      length_info, k_rope_pos_offset, q_rope_position, output, lse, rotary_mode,
                                      rope_scale, rope_theta, sm_scale))
        else:
            status: T.int32 = T.call_extern(
                "int32", "ember_decode_attention", Q.data, pages.data, T.address_of(page_table_indptr[0]),
                T.address_of(page_table_values[0]), T.address_of(length_info[0]), output.data, lse.data,
                T.Cast("int64", B), h_q, h_kv, d, page_size, call_scale(sm_scale), call_window(sm_scale),
                T.float32(softcap))
            assert status == 0, "ember_decode_attention failed"
    # fmt: on
    return decode


def decode_paged_16bit(h_q: int, h_kv: int, d: int, page_size: int, dtype: str,
                       inline_rope_kernel: str = DECODE_INLINE_ROPE, block: int = 32, window: int = 0,
                       by_sign: bool = False, softcap: float = 0.0) -> tirx.PrimFunc:
    """TVM's cpu decode kernel's signature for float16 / bfloat16 caches, computed as `prefill_paged` does (one
    causal query row per sequence, every cached key gathered to float32 first): the cpu builds that use it are the
    golden references of 16-bit gpu builds (cpu builds themselves run float32 through `decode_paged`), and it lets
    them apply per-layer windows and soft-capping as the gpu kernels do."""
    attend = _attend_macro(h_q, h_kv, d, dtype, block, 1, window, by_sign, softcap)
    gather = _gather_macro(h_kv, d, page_size, block)

    # fmt: off
    @T.prim_func(private=True, s_tir=True)
    def decode(Q_handle: T.handle, pages_handle: T.handle, page_table_indptr_handle: T.handle,
               page_table_values_handle: T.handle, var_length_info: T.handle, k_rope_pos_offset_handle: T.handle,
               q_rope_position_handle: T.handle, output_handle: T.handle, lse_handle: T.handle,
               rotary_mode: T.int32, rope_scale: T.float32, rope_theta: T.float32, sm_scale: T.float32):
        T.func_attr({"op_pattern": 8, "tirx.is_scheduled": True, "tirx.noalias": True})
        B, nnz_pages, max_num_pages = T.int32(), T.int32(), T.int32()
        Q = T.match_buffer(Q_handle, (B, h_q, d), dtype)
        pages = T.match_buffer(pages_handle, (max_num_pages, 2, h_kv, page_size, d), dtype)
        page_indptr = T.match_buffer(page_table_indptr_handle, (B + 1,), "int32", offset_factor=1)
        page_values = T.match_buffer(page_table_values_handle, (nnz_pages,), "int32", offset_factor=1)
        length_info = T.match_buffer(var_length_info, (B,), "int32", offset_factor=1)
        k_rope_pos_offset = T.match_buffer(k_rope_pos_offset_handle, (B,), "int32", offset_factor=1)
        q_rope_position = T.match_buffer(q_rope_position_handle, (B,), "int32", offset_factor=1)
        output = T.match_buffer(output_handle, (B, h_q, d), dtype)
        lse = T.match_buffer(lse_handle, (B, h_q), "float32")
        q_indptr = T.sblock_alloc_buffer((B + 1,), "int32")  # one query row per sequence
        kt = T.sblock_alloc_buffer((h_kv, d, nnz_pages * page_size + block), "float32")  # keys transposed
        vals = T.sblock_alloc_buffer((nnz_pages * page_size, h_kv, d), "float32")
        if rotary_mode == 1:
            T.evaluate(T.call_cpacked(inline_rope_kernel, Q, pages, page_indptr, page_values, length_info,
                                      k_rope_pos_offset, q_rope_position, output, lse, rotary_mode, rope_scale,
                                      rope_theta, sm_scale))
        else:
            for i in range(B + 1):
                q_indptr[i] = i
            gather(pages, page_values, kt, vals, max_num_pages, nnz_pages)
            for b in range(B):
                for hq in T.parallel(h_q):
                    attend(Q, q_indptr, kt, vals, output, lse, b, hq, page_indptr[b] * page_size,
                           T.if_then_else(page_indptr[b + 1] > page_indptr[b],
                                          (page_indptr[b + 1] - page_indptr[b] - 1) * page_size + length_info[b], 0),
                           1, sm_scale)
    # fmt: on
    return decode


HALF_DTYPES = ("float16", "bfloat16")  # decode_paged_16bit's caches


def _decode_signature(func: tirx.PrimFunc) -> tuple[int, int, int, int, str] | None:
    """(h_q, h_kv, d, page_size, dtype) of TVM's cpu decode kernel (float32, or 16-bit: decode_paged_16bit), or
    None if it is not the one known."""
    params = list(func.params)
    if len(params) != 13:
        return None
    buffers = params[:9]
    if not all(hasattr(b, "shape") for b in buffers):
        return None
    q, pages, length_info = _shape(buffers[0]), _shape(buffers[1]), buffers[4]
    if len(q) != 3 or len(pages) != 5 or len(length_info.shape) != 1 or None in q[1:] + pages[1:]:
        return None
    dtype = str(buffers[0].dtype)
    if dtype not in ("float32", *HALF_DTYPES) or str(buffers[1].dtype) != dtype or str(buffers[7].dtype) != dtype:
        return None
    h_q, d = q[1], q[2]
    h_kv, page_size = pages[2], pages[3]
    if pages[4] != d or d % 16 or d > 256 or h_q % h_kv:
        return None
    return h_q, h_kv, d, page_size, dtype


def _decode_kernel(h_q: int, h_kv: int, d: int, page_size: int, dtype: str, **extra) -> tirx.PrimFunc:
    if dtype == "float32":
        return decode_paged(h_q, h_kv, d, page_size, **extra)
    return decode_paged_16bit(h_q, h_kv, d, page_size, dtype, **extra)


@tvm.transform.module_pass(opt_level=0, name="ReplaceCPUDecodeAttention")
def replace_decode_attention(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
    """Swap TVM's serial cpu decode kernel for `decode_paged` (float32) or `decode_paged_16bit`; the original stays
    as DECODE_INLINE_ROPE."""
    extra = dict(window=window_of(mod), by_sign=window_by_sign(mod), softcap=softcap_of(mod))
    mod = swap_kernel(mod, DECODE_NAME, lambda f: None if (sig := _decode_signature(f)) is None
                      else _decode_kernel(*sig, **extra), keep_as=DECODE_INLINE_ROPE)
    require_windowed(mod, (DECODE_INLINE_ROPE,), "cpu decode attention")
    return mod


# ------------------------------------------------------------------------------------------------ rope split
ROPE_NAME = "fused_rope"  # the KV cache's split of qkv into q, k (rotated) and v, before the append


def rope_split(h_q: int, h_kv: int, d: int, rotary_dim: int, theta: float, scaling: dict | None) -> tirx.PrimFunc:
    """Same signature as TVM's `fused_rope`; the body calls ember_rope_split (native/rope.c)."""
    scaling = scaling or {}
    llama3 = scaling.get("rope_type") == "llama3"
    factor = float(scaling["factor"]) if llama3 else 0.0
    low = float(scaling.get("low_freq_factor", 0.0)) if llama3 else 0.0
    high = float(scaling.get("high_freq_factor", 0.0)) if llama3 else 0.0
    original = float(scaling.get("original_max_position_embeddings", 0.0)) if llama3 else 0.0

    # fmt: off
    @T.prim_func(private=True, s_tir=True)
    def fused_rope(var_qkv: T.handle, var_position_map: T.handle, var_q: T.handle, var_k: T.handle,
                   var_v: T.handle, apply_rope: T.int64):
        T.func_attr({"op_pattern": 8, "tirx.noalias": True, "tirx.is_scheduled": True})
        seq_len, position_map_elem_offset = T.int32(), T.int32()
        qkv = T.match_buffer(var_qkv, (seq_len, h_q + 2 * h_kv, d), "float32")
        q = T.match_buffer(var_q, (seq_len, h_q, d), "float32")
        k = T.match_buffer(var_k, (seq_len, h_kv, d), "float32")
        v = T.match_buffer(var_v, (seq_len, h_kv, d), "float32")
        position_map = T.match_buffer(var_position_map, (seq_len,), "int32", elem_offset=position_map_elem_offset)
        status: T.int32 = T.call_extern(
            "int32", "ember_rope_split", qkv.data, T.address_of(position_map[0]), q.data, k.data, v.data,
            T.Cast("int64", seq_len), h_q, h_kv, d, rotary_dim, apply_rope, T.float32(1.0), T.float32(theta),
            T.float32(factor), T.float32(low), T.float32(high), T.float32(original))
        assert status == 0, "ember_rope_split failed"
    # fmt: on
    return fused_rope


def _rope_signature(func: tirx.PrimFunc) -> tuple[int, int, int] | None:
    """(h_q, h_kv, d) of TVM's float32 `fused_rope`, or None."""
    params = list(func.params)
    if len(params) != 6 or not all(hasattr(b, "shape") for b in params[:5]):
        return None
    qkv, q, k = _shape(params[0]), _shape(params[2]), _shape(params[3])
    if len(qkv) != 3 or len(q) != 3 or len(k) != 3 or None in qkv[1:] + q[1:] + k[1:]:
        return None
    if any(str(b.dtype) != "float32" for b in (params[0], params[2], params[3], params[4])):
        return None
    if qkv[1] != q[1] + 2 * k[1] or not qkv[2] == q[2] == k[2]:
        return None
    return q[1], k[1], q[2]


@tvm.transform.module_pass(opt_level=0, name="ReplaceCPURopeSplit")
def replace_rope_split(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
    """Swap the KV cache's `fused_rope` for `rope_split`, with the rope that lower() recorded on the module."""
    from ..lower import ROPE_ATTR

    raw = mod.attrs.get(ROPE_ATTR) if mod.attrs is not None else None
    rope = json.loads(str(raw)) if raw is not None else {"theta": 10000.0, "scaling": None}
    scaling = rope.get("scaling") or {}
    if scaling.get("rope_type", "default") not in ("default", "llama3"):
        return mod

    def make(func: tirx.PrimFunc) -> tirx.PrimFunc | None:
        sig = _rope_signature(func)
        if sig is None:
            return None
        rotary = int(rope.get("rotary_dim") or sig[2])
        if rotary > 512 or rotary % 2 or rotary > sig[2]:
            return None
        return rope_split(*sig, rotary, float(rope.get("theta", 10000.0)), scaling)

    return swap_kernel(mod, ROPE_NAME, make)


__all__ = ["decode_paged", "decode_paged_16bit", "prefill_ragged", "replace_decode_attention", "replace_prefill_attention",
           "replace_rope_split", "rope_split", "swap_kernel"]
