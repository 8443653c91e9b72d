#!/usr/bin/env python3
"""ember's NCCL collectives on ONE GPU (targets/cuda/kernels/nccl_collectives.cu, runtime/nccl.py): the functions
compiled into a cuda --tensor-parallel artifact's model.so, with a 1-rank communicator on cuda:0 (NCCL takes one
rank per GPU, so one GPU gives one rank). With one rank the all-reduce (any kind) and the all-gather are the
identity: each is checked exact, per dtype (fp16, bf16, fp32), on odd sizes and a tensor view with a byte offset,
then the one-line errors (a wrong recv size, no communicator after destroy). The library's path to libnccl, NCCL's
version and every result are one JSON line each; exit 1 if a check fails.

    python tools/nccl_one_gpu.py ARTIFACT        (a cuda --tensor-parallel build: tools/prepare_tp_nccl_gpu.sh)
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

SHAPES = ((4096,), (3, 257), (16, 8192))
KINDS = {"sum": 0, "max": 3}


def main(artifact: Path) -> int:
    import numpy as np

    from ember.runtime.artifact import read_manifest
    from ember.runtime.loader import library_module
    from ember.runtime.nccl import ALL_GATHER, ALL_REDUCE, NcclFunctions, NcclGroup
    from ember.runtime.tensor_parallel import HostGroup
    from ember.runtime.tvm_import import ensure_device_runtime, import_tvm

    ensure_device_runtime("cuda")
    tvm = import_tvm()
    manifest = read_manifest(artifact)
    lib = artifact / manifest.library
    module = library_module(lib)
    group = NcclGroup(NcclFunctions.of(module, str(lib)), [0], HostGroup(1).run)
    print(json.dumps({"nccl": group.version, "library": group.library, "artifact": manifest.name}), flush=True)
    allreduce, allgather = module.get_function(ALL_REDUCE, True), module.get_function(ALL_GATHER, True)
    dev = tvm.cuda(0)
    rng = np.random.default_rng(0)
    failed = 0

    def report(row: dict) -> None:
        nonlocal failed
        failed += not row["ok"]
        print(json.dumps(row), flush=True)

    for dtype in ("float16", "bfloat16", "float32"):
        np_dtype = np.float32 if dtype == "float32" else np.float16
        if dtype == "bfloat16":
            import ml_dtypes

            np_dtype = ml_dtypes.bfloat16
        for shape in SHAPES:
            x = rng.standard_normal(shape).astype(np.float32).astype(np_dtype)
            send = tvm.runtime.tensor(x, dev)
            for kind, code in KINDS.items():
                recv = tvm.runtime.empty(shape, dtype, dev)
                allreduce(send, tvm.runtime.ShapeTuple([code]), True, recv)
                dev.sync()
                report({"op": f"allreduce_{kind}", "dtype": dtype, "shape": list(shape),
                        "ok": bool(np.array_equal(recv.numpy().view(np.uint8), x.view(np.uint8)))})
            stacked = tvm.runtime.tensor(x.reshape((1, *shape)), dev)
            recv = tvm.runtime.empty((1, *shape), dtype, dev)
            allgather(stacked, True, recv)
            dev.sync()
            report({"op": "allgather", "dtype": dtype, "shape": [1, *shape],
                    "ok": bool(np.array_equal(recv.numpy().view(np.uint8), x.reshape((1, *shape)).view(np.uint8)))})
    # a view with a byte offset (the second row of a [2, N] buffer), as the VM may pass a slice of its storage
    x = rng.standard_normal((2, 1024)).astype(np.float16)
    whole = tvm.runtime.tensor(x, dev)
    row = whole._create_view((1024,), "float16", relative_byte_offset=2048)
    recv = tvm.runtime.empty((1024,), "float16", dev)
    allreduce(row, tvm.runtime.ShapeTuple([0]), True, recv)
    dev.sync()
    report({"op": "allreduce_sum", "dtype": "float16", "view_byte_offset": 2048,
            "ok": bool(np.array_equal(recv.numpy(), x[1]))})
    report(_error_row("recv of another size", lambda: allreduce(
        tvm.runtime.tensor(x, dev), tvm.runtime.ShapeTuple([0]), True, tvm.runtime.empty((7,), "float16", dev)),
        "ember_tp_nccl_allreduce: send has 2048 elements, recv 7"))
    group.close()
    report(_error_row("no communicator", lambda: allgather(
        tvm.runtime.tensor(x[None], dev), True, tvm.runtime.empty((1, 2, 1024), "float16", dev)),
        "ember_tp_nccl_allgather: no NCCL communicator on cuda:0"))
    return 1 if failed else 0


def _error_row(what: str, call, wanted: str) -> dict:
    try:
        call()
    except Exception as err:  # noqa: BLE001 - the library's error, checked by its text
        text = str(err).strip()
        return {"error": what, "message": text.splitlines()[-1] if text else "", "ok": wanted in text}
    return {"error": what, "message": "(no error)", "ok": False}


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    sys.exit(main(Path(sys.argv[1])))
