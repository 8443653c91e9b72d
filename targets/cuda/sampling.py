"""Sampling on the device for cuda builds: the Relax entry points `sample` and `sample_reset` (kernels/sample.cuh).

    sample(logits f32 [b, 1, vocab], params f32 [b, PARAMS], counts i32 [slots, vocab], ids i32 [b], info i32 [b, INFO])
        -> (ids, info)      one token per row, written into `ids` (and what was kept into `info`, for checks);
                            counts[slot, token] += 1 for the sampled token when the row's FLAGS say so
    sample_reset(counts i32 [slots, vocab], prompt i32 [n], slot i32 [1]) -> counts
                            clears one slot of the penalty table and flags the prompt's tokens
    sample_restore(counts, tokens i32 [n], meta i32 [2]) -> counts
                            a slot for a generation part way through: meta = (slot, n_prompt); the first n_prompt
                            tokens flagged as the prompt, the rest counted as generated (a preempted sequence)
    sample_ext(logits, params f32 [b, EXT_PARAMS], counts, aux i32 [n], ids, info, lp f32 [b, LOGPROB_COLS])
        -> (ids, info, lp)  the server's: per row logit_bias and a grammar's allowed-token bitmask from `aux` applied
                            to the logits in place (`prepare`), the split sample, then the log-probabilities a row
                            asks for (`logprobs`); the row fields after PARAMS say where in `aux` (sample.cuh ExtParam)

Both write into tensors the caller made (call_tir_inplace), so a decode loop that reuses them allocates nothing.
The params row layout (`Param` in sample.cuh) is runtime/sampler.py's DEVICE_PARAM_FIELDS (device_params()).
The kernels are opaque PrimFuncs whose body binds blockIdx.x / threadIdx.x and call_extern's the templates, as
native_gemv.py does; device_code.py prepends sample.cuh to the generated CUDA.

Two kernels compute the same thing: "split" (the default) cuts each row into slices, one block each (32 blocks
per row up to 8 rows, 16 above), for up to GROUPS rows at once (`run_split`); "row" is one block of 1024 threads per
row (`run`, the first version, kept as a fallback: `add_sampler(mod, variant="row")`, or EMBER_DEVICE_SAMPLER=row
when compiling).
"""
from __future__ import annotations

import os
from typing import Any

from ...runtime.sampler import DEVICE_EXT_PARAMS, DEVICE_INFO_FIELDS, DEVICE_LOGPROB_COLS, DEVICE_PARAMS

THREADS = 1024  # the row kernel: one block per row
# The split kernel: GROUPS rows at once at most; SPLIT blocks of SPLIT_THREADS per row up to SMALL_BATCH rows, else
# SPLIT_LARGE: at most 256 blocks, resident at once on an H200 (2 blocks per SM at its 116 registers per thread)
SPLIT_THREADS, GROUPS, SPLIT, SPLIT_LARGE, SMALL_BATCH = 256, 16, 32, 16, 8
VARIANTS = ("split", "row")
PARAMS = DEVICE_PARAMS  # the row layout is runtime/sampler.py's DEVICE_PARAM_FIELDS
INFO = len(DEVICE_INFO_FIELDS)
SAMPLE_FUNCTION, RESET_FUNCTION = "sample", "sample_reset"
RESTORE_FUNCTION, EXT_FUNCTION = "sample_restore", "sample_ext"
FUNCTIONS = (SAMPLE_FUNCTION, RESET_FUNCTION, RESTORE_FUNCTION, EXT_FUNCTION)
EXT_PARAMS, LOGPROB_COLS = DEVICE_EXT_PARAMS, DEVICE_LOGPROB_COLS
PREPARE_THREADS, PREPARE_PARTS = 256, 8  # prepare: PREPARE_PARTS blocks per row


def default_variant() -> str:
    variant = os.environ.get("EMBER_DEVICE_SAMPLER", "split")
    if variant not in VARIANTS:
        raise ValueError(f"EMBER_DEVICE_SAMPLER must be one of {VARIANTS}, got {variant!r}")
    return variant


def sample_kernel(variant: str = "split") -> Any:
    from tvm.script import tirx as T

    if variant == "split":
        return _split_kernel()
    if variant != "row":
        raise ValueError(f"unknown sampler variant {variant!r} (one of {VARIANTS})")

    @T.prim_func(private=True)
    def kernel(var_logits: T.handle, var_params: T.handle, var_counts: T.handle, var_ids: T.handle,
               var_info: T.handle):
        T.func_attr({"op_pattern": 8, "tirx.is_scheduled": True, "tirx.noalias": True})
        b, v, slots = T.int64(), T.int64(), T.int64()
        logits = T.match_buffer(var_logits, (b, 1, v), "float32")
        params = T.match_buffer(var_params, (b, PARAMS), "float32")
        counts = T.match_buffer(var_counts, (slots, v), "int32")
        ids = T.match_buffer(var_ids, (b,), "int32")
        info = T.match_buffer(var_info, (b, INFO), "int32")
        bx = T.launch_thread("blockIdx.x", b)
        tx = T.launch_thread("threadIdx.x", THREADS)
        T.evaluate(T.call_extern("int32", f"ember::sample::run<{THREADS}>", logits.access_ptr("r"),
                                 params.access_ptr("r"), counts.access_ptr("rw"), ids.access_ptr("w"),
                                 info.access_ptr("w"), T.Cast("int32", v), 1))

    return kernel


def _split_kernel(stride: int = PARAMS) -> Any:
    from tvm.script import tirx as T

    name = f"ember::sample::run_split<{SPLIT_THREADS}>" if stride == PARAMS else (
        f"ember::sample::run_split<{SPLIT_THREADS}, {stride}>")

    @T.prim_func(private=True)
    def kernel(var_logits: T.handle, var_params: T.handle, var_counts: T.handle, var_ids: T.handle,
               var_info: T.handle):
        T.func_attr({"op_pattern": 8, "tirx.is_scheduled": True, "tirx.noalias": True})
        b, v, slots = T.int64(), T.int64(), T.int64()
        logits = T.match_buffer(var_logits, (b, 1, v), "float32")
        params = T.match_buffer(var_params, (b, stride), "float32")
        counts = T.match_buffer(var_counts, (slots, v), "int32")
        ids = T.match_buffer(var_ids, (b,), "int32")
        info = T.match_buffer(var_info, (b, INFO), "int32")
        bx = T.launch_thread("blockIdx.x", T.min(b, T.int64(GROUPS)) * T.if_then_else(
            b <= T.int64(SMALL_BATCH), T.int64(SPLIT), T.int64(SPLIT_LARGE)))
        tx = T.launch_thread("threadIdx.x", SPLIT_THREADS)
        T.evaluate(T.call_extern("int32", name, logits.access_ptr("r"),
                                 params.access_ptr("r"), counts.access_ptr("rw"), ids.access_ptr("w"),
                                 info.access_ptr("w"), T.Cast("int32", v), 1, T.Cast("int32", b)))

    return kernel


def reset_kernel() -> Any:
    from tvm.script import tirx as T

    @T.prim_func(private=True)
    def kernel(var_counts: T.handle, var_prompt: T.handle, var_slot: T.handle):
        T.func_attr({"op_pattern": 8, "tirx.is_scheduled": True, "tirx.noalias": True})
        slots, v, n = T.int64(), T.int64(), T.int64()
        counts = T.match_buffer(var_counts, (slots, v), "int32")
        prompt = T.match_buffer(var_prompt, (n,), "int32")
        slot = T.match_buffer(var_slot, (1,), "int32")
        bx = T.launch_thread("blockIdx.x", 1)
        tx = T.launch_thread("threadIdx.x", THREADS)
        T.evaluate(T.call_extern("int32", f"ember::sample::reset<{THREADS}>", counts.access_ptr("rw"),
                                 prompt.access_ptr("r"), slot.access_ptr("r"), T.Cast("int32", n),
                                 T.Cast("int32", v)))

    return kernel


def restore_kernel() -> Any:
    from tvm.script import tirx as T

    @T.prim_func(private=True)
    def kernel(var_counts: T.handle, var_tokens: T.handle, var_meta: T.handle):
        T.func_attr({"op_pattern": 8, "tirx.is_scheduled": True, "tirx.noalias": True})
        slots, v, n = T.int64(), T.int64(), T.int64()
        counts = T.match_buffer(var_counts, (slots, v), "int32")
        tokens = T.match_buffer(var_tokens, (n,), "int32")
        meta = T.match_buffer(var_meta, (2,), "int32")
        bx = T.launch_thread("blockIdx.x", 1)
        tx = T.launch_thread("threadIdx.x", THREADS)
        T.evaluate(T.call_extern("int32", f"ember::sample::restore<{THREADS}>", counts.access_ptr("rw"),
                                 tokens.access_ptr("r"), meta.access_ptr("r"), T.Cast("int32", n),
                                 T.Cast("int32", v)))

    return kernel


def prepare_kernel() -> Any:
    from tvm.script import tirx as T

    @T.prim_func(private=True)
    def kernel(var_logits: T.handle, var_params: T.handle, var_aux: T.handle):
        T.func_attr({"op_pattern": 8, "tirx.is_scheduled": True, "tirx.noalias": True})
        b, v, n = T.int64(), T.int64(), T.int64()
        logits = T.match_buffer(var_logits, (b, 1, v), "float32")
        params = T.match_buffer(var_params, (b, EXT_PARAMS), "float32")
        aux = T.match_buffer(var_aux, (n,), "int32")
        bx = T.launch_thread("blockIdx.x", b * T.int64(PREPARE_PARTS))
        tx = T.launch_thread("threadIdx.x", PREPARE_THREADS)
        T.evaluate(T.call_extern("int32", f"ember::sample::prepare<{PREPARE_THREADS}>", logits.access_ptr("rw"),
                                 params.access_ptr("r"), aux.access_ptr("r"), T.Cast("int32", v), PREPARE_PARTS))

    return kernel


def logprobs_kernel() -> Any:
    from tvm.script import tirx as T

    @T.prim_func(private=True)
    def kernel(var_logits: T.handle, var_params: T.handle, var_ids: T.handle, var_lp: T.handle):
        T.func_attr({"op_pattern": 8, "tirx.is_scheduled": True, "tirx.noalias": True})
        b, v = T.int64(), T.int64()
        logits = T.match_buffer(var_logits, (b, 1, v), "float32")
        params = T.match_buffer(var_params, (b, EXT_PARAMS), "float32")
        ids = T.match_buffer(var_ids, (b,), "int32")
        lp = T.match_buffer(var_lp, (b, LOGPROB_COLS), "float32")
        bx = T.launch_thread("blockIdx.x", b)
        tx = T.launch_thread("threadIdx.x", THREADS)
        T.evaluate(T.call_extern("int32", f"ember::sample::logprobs<{THREADS}>", logits.access_ptr("r"),
                                 params.access_ptr("r"), ids.access_ptr("r"), lp.access_ptr("w"),
                                 T.Cast("int32", v)))

    return kernel


def add_sampler(mod: Any, variant: str | None = None, name: str = SAMPLE_FUNCTION, reset: bool = True) -> Any:
    """`mod` with the Relax functions `sample` (or `name`), and unless not `reset`, `sample_reset`,
    `sample_restore` and `sample_ext` (the server's), and their kernels added; `variant` picks the sample kernel
    (default: default_variant(); sample_ext always uses the split kernel)."""
    variant = variant or default_variant()
    from tvm import relax, tirx
    from tvm.relax.type import TensorType

    bb = relax.BlockBuilder(mod)
    b, v, slots, n = (tirx.Var(name, "int64") for name in ("b", "v", "slots", "n"))

    def tensor(name: str, shape: list, dtype: str) -> relax.Var:
        return relax.Var(name, TensorType(shape, dtype))

    logits, params = tensor("logits", [b, 1, v], "float32"), tensor("params", [b, PARAMS], "float32")
    counts, ids, info = tensor("counts", [slots, v], "int32"), tensor("ids", [b], "int32"), tensor(
        "info", [b, INFO], "int32")
    with bb.function(name, [logits, params, counts, ids, info], private=False):
        kernel = bb.add_func(sample_kernel(variant), f"ember_{name}")
        out = bb.emit(relax.call_tir_inplace(kernel, [logits, params, counts, ids, info], [3, 4],
                                             [ids.ty, info.ty]))
        bb.emit_func_output(out)

    if not reset:
        return bb.get()
    counts, prompt, slot = tensor("counts", [slots, v], "int32"), tensor("prompt", [n], "int32"), tensor(
        "slot", [1], "int32")
    with bb.function(RESET_FUNCTION, [counts, prompt, slot], private=False):
        kernel = bb.add_func(reset_kernel(), "ember_sample_reset")
        out = bb.emit(relax.call_tir_inplace(kernel, [counts, prompt, slot], [0], [counts.ty]))
        bb.emit_func_output(out)

    counts, tokens, meta = tensor("counts", [slots, v], "int32"), tensor("tokens", [n], "int32"), tensor(
        "meta", [2], "int32")
    with bb.function(RESTORE_FUNCTION, [counts, tokens, meta], private=False):
        kernel = bb.add_func(restore_kernel(), "ember_sample_restore")
        out = bb.emit(relax.call_tir_inplace(kernel, [counts, tokens, meta], [0], [counts.ty]))
        bb.emit_func_output(out)

    logits, params = tensor("logits", [b, 1, v], "float32"), tensor("params", [b, EXT_PARAMS], "float32")
    counts, aux, ids = tensor("counts", [slots, v], "int32"), tensor("aux", [n], "int32"), tensor("ids", [b], "int32")
    info, lp = tensor("info", [b, INFO], "int32"), tensor("lp", [b, LOGPROB_COLS], "float32")
    with bb.function(EXT_FUNCTION, [logits, params, counts, aux, ids, info, lp], private=False):
        prepare = bb.add_func(prepare_kernel(), "ember_sample_prepare")
        draw = bb.add_func(_split_kernel(EXT_PARAMS), "ember_sample_ext")
        logprob = bb.add_func(logprobs_kernel(), "ember_sample_logprobs")
        ready = bb.emit(relax.call_tir_inplace(prepare, [logits, params, aux], [0], [logits.ty]))
        drawn = bb.emit(relax.call_tir_inplace(draw, [ready, params, counts, ids, info], [3, 4], [ids.ty, info.ty]))
        new_ids = bb.emit(relax.TupleGetItem(drawn, 0))
        new_info = bb.emit(relax.TupleGetItem(drawn, 1))
        new_lp = bb.emit(relax.call_tir_inplace(logprob, [ready, params, new_ids, lp], [3], [lp.ty]))
        bb.emit_func_output(relax.Tuple([new_ids, new_info, new_lp]))
    return bb.get()


__all__ = ["EXT_FUNCTION", "EXT_PARAMS", "FUNCTIONS", "GROUPS", "INFO", "LOGPROB_COLS", "PARAMS", "RESET_FUNCTION",
           "RESTORE_FUNCTION", "SAMPLE_FUNCTION", "SPLIT", "THREADS", "VARIANTS", "add_sampler", "default_variant"]
