"""Sampling on the device for cuda builds: the Relax entry points `sample` and `sample_reset` (kernels/sample.cuh).

    sample(logits f32 [b, 1, vocab], params f32 [b, PARAMS], counts i32 [slots, vocab], ids i32 [b], info i32 [b, INFO])
        -> (ids, info)      one token per row, written into `ids` (and what was kept into `info`, for checks);
                            counts[slot, token] += 1 for the sampled token when the row's FLAGS say so
    sample_reset(counts i32 [slots, vocab], prompt i32 [n], slot i32 [1]) -> counts
                            clears one slot of the penalty table and flags the prompt's tokens

Both write into tensors the caller made (call_tir_inplace), so a decode loop that reuses them allocates nothing.
The params row layout (`Param` in sample.cuh) is runtime/sampler.py's DEVICE_PARAM_FIELDS (device_params()).
The kernels are opaque PrimFuncs whose body binds blockIdx.x / threadIdx.x and call_extern's the templates, as
native_gemv.py does; device_code.py prepends sample.cuh to the generated CUDA.
"""
from __future__ import annotations

from typing import Any

from ...runtime.sampler import DEVICE_INFO_FIELDS, DEVICE_PARAMS

THREADS = 1024  # one block per row
PARAMS = DEVICE_PARAMS  # the row layout is runtime/sampler.py's DEVICE_PARAM_FIELDS
INFO = len(DEVICE_INFO_FIELDS)
SAMPLE_FUNCTION, RESET_FUNCTION = "sample", "sample_reset"
FUNCTIONS = (SAMPLE_FUNCTION, RESET_FUNCTION)


def sample_kernel() -> Any:
    from tvm.script import tirx as T

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


def add_sampler(mod: Any) -> Any:
    """`mod` with the Relax functions `sample` and `sample_reset` (and their kernels) added."""
    from tvm import relax, tirx
    from tvm.relax.type import TensorType

    bb = relax.BlockBuilder(mod)
    b, v, slots, n = (tirx.Var(name, "int64") for name in ("b", "v", "slots", "n"))

    def tensor(name: str, shape: list, dtype: str) -> relax.Var:
        return relax.Var(name, TensorType(shape, dtype))

    logits, params = tensor("logits", [b, 1, v], "float32"), tensor("params", [b, PARAMS], "float32")
    counts, ids, info = tensor("counts", [slots, v], "int32"), tensor("ids", [b], "int32"), tensor(
        "info", [b, INFO], "int32")
    with bb.function(SAMPLE_FUNCTION, [logits, params, counts, ids, info], private=False):
        kernel = bb.add_func(sample_kernel(), "ember_sample")
        out = bb.emit(relax.call_tir_inplace(kernel, [logits, params, counts, ids, info], [3, 4],
                                             [ids.ty, info.ty]))
        bb.emit_func_output(out)

    counts, prompt, slot = tensor("counts", [slots, v], "int32"), tensor("prompt", [n], "int32"), tensor(
        "slot", [1], "int32")
    with bb.function(RESET_FUNCTION, [counts, prompt, slot], private=False):
        kernel = bb.add_func(reset_kernel(), "ember_sample_reset")
        out = bb.emit(relax.call_tir_inplace(kernel, [counts, prompt, slot], [0], [counts.ty]))
        bb.emit_func_output(out)
    return bb.get()


__all__ = ["FUNCTIONS", "INFO", "PARAMS", "RESET_FUNCTION", "SAMPLE_FUNCTION", "THREADS", "add_sampler"]
