"""decode1 GEMVs that run the residual add + RMSNorm before them as their own prologue (norm.cuh's
`stage_add_rms_norm`, used by gemv.cuh and linear.cuh).

A linear whose x is the norm output of an `add_rms_norm` that nothing else reads gets the two addends and the norm
weight instead of x; its kernel also writes the residual sum (one block does), a second output that is bound to the
add_rms_norm's sum. The add_rms_norm kernel is then left without readers and Relax's dead-code elimination drops
it: one launch and one round trip of the residual less per norm. EMBER_CUDA_GEMV_NORM=0 keeps the separate kernel
(A/B runs).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

ENV = "EMBER_CUDA_GEMV_NORM"
SCRATCH_BYTES = 32 * 4  # the block reduction's shared floats


@dataclass(frozen=True)
class AddNorm:
    a: Any  # the lowered addends and norm weight
    b: Any
    weight: Any
    eps: float
    sum_value: Any  # the IR value (the add_rms_norm's sum) that the kernel's second output stands for


def add_norm_input(it: Any, node: Any) -> AddNorm | None:
    """The add_rms_norm this linear can absorb, or None: its x must be that node's norm output, read by this node
    alone and not returned, with every reader of the sum lowered after this node; fp16 operands of one shape."""
    if os.environ.get(ENV, "1") == "0":
        return None
    x = node.inputs[0]
    producer = x.producer
    if producer is None or producer.op != "add_rms_norm" or x is not producer.outputs[1]:
        return None
    if it.readers(x) != [node] or any(x is v for v in it.function.outputs):
        return None
    total = producer.outputs[0]
    if not all(it.comes_after(reader, node) for reader in it.readers(total)):
        return None
    a, b, weight = (it.get(v) for v in producer.inputs)
    if not a.dtype == b.dtype == weight.dtype == "float16":
        return None
    if list(map(str, a.shape)) != list(map(str, b.shape)) or len(weight.shape) != 1:
        return None
    return AddNorm(a, b, weight, float(producer.attrs["eps"]), total)


def bind_sum(it: Any, fused: AddNorm, total: Any) -> None:
    """Readers of the add_rms_norm's sum read the kernel's second output from now on."""
    it.env[id(fused.sum_value)] = total
