"""Run inside the arm64 python under qemu (tests/targets/test_cpu_aarch64.py): load artifacts with ember's runtime
(TVM's runtime library alone), score a prompt, decode greedily, and write what came out to one .npz file.

    python aarch64_probe.py OUT.npz PROMPT_IDS MAX_TOKENS ARTIFACT...

For each artifact i: logits_i (score: every position), tokens_i (greedy), and hook_i = 1 when the library's
`__TVMBackendParallelLaunch` slot holds the address of libtvm_runtime's TVMBackendParallelLaunch (the runtime filled
it on load: ember's C kernels and TIR's parallel loops run on TVM's thread pool). `machine`, `runtime_only` and
`compiler_modules` (the ember compiler modules imported, and "tvm_compiler" if TVM loaded its compiler library) describe the process.
"""
from __future__ import annotations

import ctypes
import os
import platform
import sys

import numpy as np

import ember
from ember.runtime.tvm_import import import_tvm, runtime_only


def pool_hook_filled(library: str) -> bool:
    tvm = import_tvm()
    handle = ctypes.CDLL(library, mode=os.RTLD_NOLOAD | os.RTLD_LAZY)  # the copy TVM loaded
    slot = ctypes.c_void_p.in_dll(handle, "__TVMBackendParallelLaunch").value
    pool = ctypes.cast(tvm.base._LOADED_LIBS["tvm_runtime"].TVMBackendParallelLaunch, ctypes.c_void_p).value
    return slot is not None and slot == pool


def main(argv: list[str]) -> None:
    out, prompt, max_tokens, *artifacts = argv
    ids = [int(x) for x in prompt.split(",")]
    result: dict[str, np.ndarray] = {}
    for i, path in enumerate(artifacts):
        engine = ember.load(path)
        result[f"logits_{i}"] = engine.score(ids)
        result[f"tokens_{i}"] = np.array(engine.generate(ids, max_tokens=int(max_tokens)).token_ids, dtype=np.int64)
        result[f"hook_{i}"] = np.array(int(pool_hook_filled(os.path.join(path, "model.so"))))
    compiler = sorted(m for m in sys.modules
                      if m.split(".")[:2] in (["ember", "frontend"], ["ember", "passes"], ["ember", "targets"],
                                              ["ember", "compiler"]))
    result["machine"] = np.array(platform.machine())
    result["runtime_only"] = np.array(int(runtime_only()))
    if "tvm_compiler" in import_tvm().base._LOADED_LIBS:
        compiler.append("tvm_compiler")
    result["compiler_modules"] = np.array(",".join(compiler))
    np.savez(out, **result)


if __name__ == "__main__":
    main(sys.argv[1:])
