"""Generic lowering of the mixture-of-experts ops (ir/ops_moe.py): none yet. The targets' own kernels lower them
(cpu: native/moe.c through targets/cpu/native_moe.py; cuda: kernels/moe.cuh through targets/cuda/native_moe.py);
anything they decline is refused here in one line rather than lowered to a dense all-experts computation."""
from __future__ import annotations

from .lower import LoweringError, lowers


def _refuse(it, node, args):
    x = args[0]
    raise LoweringError(f"{node.op} (a mixture-of-experts block) has no kernel for {x.dtype} activations and "
                        f"{args[2].dtype} expert weights on this target (cpu: float32 activations; cuda: float16 or "
                        f"bfloat16)")


lowers("moe")(_refuse)
lowers("quant_moe")(_refuse)
