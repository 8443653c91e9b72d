#!/usr/bin/env python3
"""ember's prefill GEMM (targets/cuda/kernels/prefill_gemm.cu) alone, against torch on the GPU.

Here:   python tools/prefill_gemm_check.py build DIR
        compiles the object as `ember compile` does (fp16 and bf16, sm_90a + sm_80 cubins, from the kernel cache)
        and a third one whose sm_80 kernel is PTX (compute_80), so that the H200 can JIT and run the sm_80 code
        path; links each into DIR/gemm-*.so (a plain shared library exporting the packed function).
On the GPU:  python tools/prefill_gemm_check.py check DIR OUT.jsonl
        every llama3-8b prefill layer shape (qkv, o, gate_up, down, and the LM head at M = 1..4) and ragged token
        counts (1, 7, 100, 128, 512, 2048, 4096): y against torch's fp32 matmul of the same fp16/bf16 inputs (max abs
        error over max |y|, output NaN-poisoned first), and time (CUDA events, median of 20) beside torch.matmul
        (cuBLAS) on the same tensors. One JSON line per case; exit 1 if a check fails.
On the GPU:  python tools/prefill_gemm_check.py kernel OUT.jsonl [--quick]
        ember's own sm_90a kernel (kernels/prefill_gemm_sm90.cuh) without TVM: nvcc compiles it there with an
        extern "C" launcher called through ctypes on torch tensors; every tile and split-K choice forced, the
        automatic choice, shapes off the tile grid (M, N, K not multiples of the tile: TMA's zero fill), fp16 and
        bf16, against torch's fp32 matmul and timed beside cuBLAS.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


LAYERS = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336)}
TOKENS = (1, 7, 100, 128, 512, 2048, 4096)
TOL = {"float16": 4e-3, "bfloat16": 3e-2}  # over max |y|: fp16/bf16 rounding of y (K = 4096..14336, fp32 sums)


def build(root: Path) -> None:
    import shutil

    from ember.targets.cuda import prefill_gemm as pg

    root.mkdir(parents=True, exist_ok=True)
    cutlass = pg.cutlass_root()
    if cutlass is None:
        raise SystemExit("nvidia-cutlass is not installed: pip install --no-deps nvidia-cutlass==4.2.0.0")
    objects = {}
    for dtype in ("float16", "bfloat16"):
        job = pg.ObjectBuild([pg.ObjectSpec(dtype, ("sm_80", "sm_90"), cutlass)])
        objects[dtype] = job.result()[0]
    # the sm_80 path as PTX: same command, the sm_80 gencode replaced by compute_80 PTX (the H200 JITs it)
    spec = pg.ObjectSpec("float16", ("sm_80", "sm_90"), cutlass)
    cmd = spec.command(shutil.which("nvcc"), pg.SOURCE, root / "ptx80.o")
    cmd[cmd.index("arch=compute_80,code=sm_80")] = "arch=compute_80,code=compute_80"
    subprocess.run(cmd, check=True)
    objects["float16-ptx80"] = root / "ptx80.o"
    libdir = pg.cuda_library_dir(shutil.which("nvcc"))
    for name, obj in objects.items():
        out = root / f"gemm-{name}.so"
        subprocess.run(["g++", "-shared", "-o", str(out), str(obj), f"-L{libdir}", "-Wl,--no-as-needed", "-lcudart"],
                       check=True)
        print(out)


def _time(fn, torch, reps: int = 20) -> float:
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) * 1e3)
    return sorted(times)[len(times) // 2]


def _speed(fn, x, w, torch) -> dict:
    """Median time of `fn` (y = x . w^T) beside torch.matmul's (cuBLAS) on the same tensors, and both rates."""
    ours = _time(fn, torch)
    theirs = _time(lambda: torch.matmul(x, w.T), torch)
    flop = 2 * x.shape[0] * w.shape[0] * x.shape[1]
    return dict(us=round(ours, 2), torch_us=round(theirs, 2), tflops=round(flop / ours / 1e6, 1),
                torch_tflops=round(flop / theirs / 1e6, 1), ratio=round(theirs / ours, 3))


def check(root: Path, out_path: Path) -> int:
    import torch
    import tvm_ffi

    failures = 0
    rows = []
    cases = [(dtype, lib) for dtype, lib in (("float16", "float16"), ("bfloat16", "bfloat16"),
                                             ("float16", "float16-ptx80"))]
    for dtype, lib in cases:
        os.environ["EMBER_GEMM_ARCH"] = "80" if lib.endswith("ptx80") else ""
        module = tvm_ffi.load_module(str(root / f"gemm-{lib}.so"))
        fn = module[f"ember_prefill_gemm_{'f16' if dtype == 'float16' else 'bf16'}"]
        tdtype = getattr(torch, dtype)
        gen = torch.Generator(device="cuda").manual_seed(0)
        shapes = [(name, m, n, k) for name, (n, k) in LAYERS.items() for m in TOKENS]
        shapes += [("lm_head", m, 128256, 4096) for m in (1, 4)]
        if lib.endswith("ptx80") or dtype == "bfloat16":
            shapes = [s for s in shapes if s[1] in (7, 512)]
        for name, m, n, k in shapes:
            x = (torch.randn(m, k, generator=gen, device="cuda") * 0.5).to(tdtype)
            w = (torch.randn(n, k, generator=gen, device="cuda") / k ** 0.5).to(tdtype)
            y = torch.full((m, n), float("nan"), device="cuda", dtype=tdtype)
            fn(x, w, y)
            torch.cuda.synchronize()
            ref = x.float() @ w.float().T
            err = ((y.float() - ref).abs().max() / ref.abs().max()).item()
            ok = bool(err <= TOL[dtype])
            failures += not ok
            row = {"lib": lib, "dtype": dtype, "layer": name, "m": m, "n": n, "k": k, "err": err, "ok": ok}
            if not lib.endswith("ptx80"):
                row.update(_speed(lambda: fn(x, w, y), x, w, torch))
            rows.append(row)
            print(json.dumps(row), flush=True)
    with open(out_path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return 1 if failures else 0


KERNEL_LAUNCHER = r"""
#include "prefill_gemm_sm90.cuh"
extern "C" int launch(int bf16, int m, int n, int k, const void* x, const void* w, void* y, void* stream, int sms,
                      int tile, int splits, float* ws, unsigned long long ws_floats) {
  auto s = static_cast<cudaStream_t>(stream);
  if (bf16) return ember::gemm90::run<__nv_bfloat16>(m, n, k, x, w, y, s, sms, ws, ws_floats, tile, splits);
  return ember::gemm90::run<__half>(m, n, k, x, w, y, s, sms, ws, ws_floats, tile, splits);
}
"""


def _kernel_library(work: Path) -> Path:
    kernels = Path(__file__).resolve().parents[1] / "targets" / "cuda" / "kernels"
    source, lib = work / "launcher.cu", work / "gemm90.so"
    source.write_text(KERNEL_LAUNCHER, encoding="utf-8")
    subprocess.run(["nvcc", "-std=c++17", "-O3", "-shared", "-Xcompiler", "-fPIC", "-gencode",
                    "arch=compute_90a,code=sm_90a", f"-I{kernels}", "-o", str(lib), str(source)], check=True)
    return lib


def check_kernel(out_path: Path, quick: bool) -> int:
    import ctypes
    import tempfile

    import torch

    lib = ctypes.CDLL(str(_kernel_library(Path(tempfile.mkdtemp()))))
    lib.launch.argtypes = [ctypes.c_int] * 4 + [ctypes.c_void_p] * 4 + [ctypes.c_int] * 3 + [ctypes.c_void_p,
                                                                                           ctypes.c_ulonglong]
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    ws_floats = 8 * 4096 * 28672
    ws = torch.empty(ws_floats, device="cuda", dtype=torch.float32)
    gen = torch.Generator(device="cuda").manual_seed(0)
    failures, rows = 0, []

    def case(dtype: str, name: str, m: int, n: int, k: int, tile: int, splits: int, timed: bool) -> None:
        nonlocal failures
        tdtype = getattr(torch, dtype)
        x = (torch.randn(m, k, generator=gen, device="cuda") * 0.5).to(tdtype)
        w = (torch.randn(n, k, generator=gen, device="cuda") / k ** 0.5).to(tdtype)
        y = torch.full((m, n), float("nan"), device="cuda", dtype=tdtype)
        stream = torch.cuda.current_stream().cuda_stream

        def run() -> int:
            return lib.launch(int(dtype == "bfloat16"), m, n, k, x.data_ptr(), w.data_ptr(), y.data_ptr(), stream,
                              sms, tile, splits, ws.data_ptr(), ws_floats)

        rc = run()
        torch.cuda.synchronize()
        ref = x.float() @ w.float().T
        err = ((y.float() - ref).abs().max() / ref.abs().max()).item() if rc == 0 else float("nan")
        ok = rc == 0 and bool(err <= TOL[dtype])
        failures += not ok
        row = {"kernel": "gemm90", "dtype": dtype, "layer": name, "m": m, "n": n, "k": k, "tile": tile,
               "splits": splits, "rc": rc, "err": err, "ok": ok}
        if timed and ok:
            row.update(_speed(run, x, w, torch))
        rows.append(row)
        print(json.dumps(row), flush=True)

    tokens = (1, 128, 512, 2048) if quick else TOKENS
    for name, (n, k) in LAYERS.items():
        for m in tokens:
            case("float16", name, m, n, k, -1, 0, True)  # the automatic choice
            if m >= 128:
                for tile in (0, 1):
                    case("float16", name, m, n, k, tile, 1, True)
            if m <= 128:
                for splits in (2, 4):
                    case("float16", name, m, n, k, 1, splits, True)
    for m in (7, 512):
        for name, (n, k) in LAYERS.items():
            case("bfloat16", name, m, n, k, -1, 0, m == 512)
    for m, n, k in ((1, 8, 8), (33, 200, 72), (129, 264, 136), (300, 1000, 1000), (77, 4104, 520)):
        for tile in (0, 1):
            for splits in (1, 3):
                case("float16", "odd", m, n, k, tile, splits, False)
        case("bfloat16", "odd", m, n, k, -1, 0, False)
    with open(out_path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    print(f"{len(rows)} cases, {failures} failed", flush=True)
    return 1 if failures else 0


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "kernel":
        return check_kernel(Path(argv[1]), "--quick" in argv)
    if len(argv) >= 2 and argv[0] == "build":
        build(Path(argv[1]))
        return 0
    if len(argv) >= 3 and argv[0] == "check":
        return check(Path(argv[1]), Path(argv[2]))
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
