"""Run one lowering of ember's ops as a standalone Relax function (no KV cache), built for cpu."""
from __future__ import annotations

import inspect
import math
import re
from types import SimpleNamespace
from typing import Any

import numpy as np
import tvm
from tvm import relax
from tvm.relax.frontend import nn

from ember.ir.graph import Node
from ember.targets.cpu.build import build_cpu
from ember.targets.lower import LOWERINGS


def export_op(op: str, attrs: dict[str, Any], specs: dict[str, tuple[list[Any], str]],
              dequant_stage: bool = False) -> tvm.IRModule:
    """A Relax module whose `main(*inputs)` applies the generic lowering of `op`; specs: name -> (shape, dtype).
    `dequant_stage`: Target.dequant_stage of the target whose form is built (False: cpu's; True: the GPU targets')."""
    node = Node(op, [], dict(attrs))
    interpreter = SimpleNamespace(dequant_stage=dequant_stage)  # what the lowerings read of targets.lower's

    def main(self, *args):
        return LOWERINGS[op](interpreter, node, list(args))

    params = [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in ("self", *specs)]
    main.__signature__ = inspect.Signature(params)
    model = type("OneOp", (nn.Module,), {"main": main})()
    spec = {"main": {n: nn.spec.Tensor(list(shape), dtype) for n, (shape, dtype) in specs.items()}}
    spec["main"]["$"] = {"param_mode": "none", "effect_mode": "none"}
    mod, _ = model.export_tvm(spec=spec)
    return mod


def run_op(op: str, attrs: dict[str, Any], inputs: dict[str, np.ndarray],
           shapes: dict[str, list[Any]] | None = None, dequant_stage: bool = False) -> np.ndarray:
    """Build for cpu and run on `inputs`; `shapes` may give symbolic dims (str) for some inputs."""
    shapes = shapes or {}
    specs = {n: (shapes.get(n, list(a.shape)), str(a.dtype)) for n, a in inputs.items()}
    vm = relax.VirtualMachine(build_cpu(export_op(op, attrs, specs, dequant_stage)).load(), tvm.cpu())
    return vm["main"](*[tvm.runtime.tensor(a) for a in inputs.values()]).numpy()


_ALLOC = re.compile(r"(\w+) = T\.(?:sblock_)?alloc_\w*\(\(([^()]*(?:\([^()]*\)[^()]*)*)\)")


def buffer_allocations(mod: tvm.IRModule) -> dict[str, dict[str, int]]:
    """Per PrimFunc: each buffer it allocates -> elements (static dims only), after TVM compacts allocations to
    the region a scheduled loop nest really uses."""
    from tvm import s_tir, tirx

    funcs = tvm.IRModule({gv: f for gv, f in mod.functions_items() if isinstance(f, tirx.PrimFunc)})
    compact = tvm.transform.Sequential([
        s_tir.transform.CanonicalizeLoop(), s_tir.transform.LowerCrossThreadReduction(),
        s_tir.transform.LowerInitBlock(), s_tir.transform.PlanAndUpdateBufferAllocationLocation(),
        s_tir.transform.ConvertBlocksToOpaque(), s_tir.transform.CompactBufferAllocation()])
    out = {}
    for gv, func in compact(funcs).functions_items():
        sizes = {}
        for name, dims in _ALLOC.findall(func.script()):
            sizes[name] = math.prod(int(c) for c in re.findall(r"T\.int64\((\d+)\)|^(\d+)$", dims) for c in c if c)
        out[gv.name_hint] = sizes
    return out
