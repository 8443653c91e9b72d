"""ember's prefill GEMM for quantized weights (kernels/prefill_qgemm.cuh) on a GPU, against torch: numbers and speed.

Run on the GPU machine (torch + nvcc, no TVM needed): each (scheme, shape, tile) is compiled by nvcc into its own
small library with an extern "C" launcher, called through ctypes on torch tensors. Reference: the weights
dequantized by torch in float32 (s*(q-8), s*q+m, s*q from the packed words, ir/ops_quant.py's layout) and
x.float() @ W^T in float32; speed beside cuBLAS (torch fp16 x @ W16^T of the same dequantized weights).

    python tools/qgemm_check.py OUT.jsonl [--quick] [--tiles T,..] [--layers L,..] [--ms M,..] [--no-timing]

Tiles: mma.sync (prefill_qgemm.cuh), wgmma with both operands in shared memory ("wg", prefill_qgemm_sm90.cuh),
wgmma with the weights as the register operand ("rs", prefill_qgemm_sm90_rs.cuh, 4-bit only), and the same fed by
a TMA producer warp ("ws", prefill_qgemm_sm90_ws.cuh, 4-bit only).

Under ncu: `ncu --clock-control none -k regex:qgemm90 ... python tools/qgemm_check.py OUT --tiles wg128x256s4
--layers gate_up --ms 128 --no-timing` profiles one shape's launch (without the timing loops' launches).
"""
from __future__ import annotations

import argparse
import concurrent.futures as futures
import ctypes
import json
import subprocess
import sys
import tempfile
from pathlib import Path

KERNELS = Path(__file__).resolve().parents[1] / "targets" / "cuda" / "kernels"
Q4, Q4_MIN, Q8 = 0, 1, 2
SCHEMES = {"q4f16": Q4, "q4f16_1": Q4_MIN, "q8f16": Q8}
LLAMA3_8B = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336)}
TILES = {"128x128x2x4s4": (128, 128, 2, 4, 4), "128x128x2x2s4": (128, 128, 2, 2, 4),
         "64x64x2x2s4": (64, 64, 2, 2, 4),  # mma.sync (prefill_qgemm.cuh): bm, bn, warps m, warps n, stages
         "wg128x128s4": (128, 128, 4), "wg128x256s3": (128, 256, 3), "wg128x256s4": (128, 256, 4),
         "wg64x128s4": (64, 128, 4), "wg64x64s4": (64, 64, 4), "wg128x64s4": (128, 64, 4),  # wgmma: bm, bn, stages
         # cost probes (numbers wrong on purpose): no scale loads, no dequantization
         "wg128x256s4-nosc": (128, 256, 4, "EMBER_QGEMM_PROBE_NO_SCALES"),
         "wg128x256s4-nodq": (128, 256, 4, "EMBER_QGEMM_PROBE_NO_DEQUANT"),
         # split-K (the .cu's choice for grids under half the SMs)
         "wg128x128s4-k2": (128, 128, 4, 2), "wg128x128s4-k4": (128, 128, 4, 4), "wg128x64s4-k2": (128, 64, 4, 2),
         # weights as the register operand (prefill_qgemm_sm90_rs.cuh, 4-bit): ("rs", warpgroups of 64 features,
         # tokens, stages, blocks per SM, splits)
         "rs2x128s4": ("rs", 2, 128, 4, 1, 1), "rs4x128s4": ("rs", 4, 128, 4, 1, 1),
         "rs2x256s4": ("rs", 2, 256, 4, 1, 1), "rs2x64s4": ("rs", 2, 64, 4, 1, 1), "rs4x64s4": ("rs", 4, 64, 4, 1, 1),
         "rs2x128s4b2": ("rs", 2, 128, 4, 2, 1), "rs1x128s6b2": ("rs", 1, 128, 6, 2, 1),
         "rs2x128s4-k2": ("rs", 2, 128, 4, 1, 2), "rs2x128s4-k4": ("rs", 2, 128, 4, 1, 4),
         "rs4x128s4-k2": ("rs", 4, 128, 4, 1, 2),
         # the register-operand kernel fed by a TMA producer warp (prefill_qgemm_sm90_ws.cuh, 4-bit): ("ws",
         # consumer warpgroups, tokens, stages, blocks per SM, splits)
         "ws2x128s6": ("ws", 2, 128, 6, 1, 1), "ws1x128s6b2": ("ws", 1, 128, 6, 2, 1),
         "ws1x64s6b2": ("ws", 1, 64, 6, 2, 1), "ws2x64s6": ("ws", 2, 64, 6, 1, 1),
         "ws2x128s6-k2": ("ws", 2, 128, 6, 1, 2), "ws2x128s6-k4": ("ws", 2, 128, 6, 1, 4),
         "ws1x128s6b2-k2": ("ws", 1, 128, 6, 2, 2)}
DEFAULT = ("128x128x2x4s4", "64x64x2x2s4", "wg128x128s4", "wg64x128s4")  # the tiles the other schemes run

LAUNCHER = """
#include "prefill_qgemm.cuh"
#include <cuda_runtime.h>
extern "C" __global__ void __launch_bounds__({threads}) kern(int m, const void* x, const void* w, const void* s,
    const void* mn, const void* bias, void* y) {{ ember::qgemm::run<{args}>(m, x, w, s, mn, bias, y); }}
extern "C" int launch(int m, const void* x, const void* w, const void* s, const void* mn, const void* bias,
                      void* y, void* stream) {{
  const int blocks = (m + {bm} - 1) / {bm} * ({n} / {bn});
  kern<<<blocks, {threads}, 0, (cudaStream_t)stream>>>(m, x, w, s, mn, bias, y);
  return (int)cudaGetLastError();
}}
"""
LAUNCHER_RS = """
#include "prefill_qgemm_sm90_rs.cuh"
static int g_splits = 1;
static float* g_workspace = nullptr;
extern "C" void set_split(int splits, void* workspace) {{ g_splits = splits; g_workspace = (float*)workspace; }}
extern "C" int launch(int m, const void* x, const void* w, const void* s, const void* mn, const void* bias,
                      void* y, void* stream) {{
  return (int)ember::qgemm90::launch_rs<{args}>(m, {n}, {k}, x, w, s, mn, y, (cudaStream_t)stream, g_splits,
                                                g_workspace);
}}
"""
LAUNCHER_WS = LAUNCHER_RS.replace("prefill_qgemm_sm90_rs.cuh", "prefill_qgemm_sm90_ws.cuh").replace(
    "launch_rs<", "launch_ws<")
LAUNCHER90 = """
#include "prefill_qgemm_sm90.cuh"
static int g_splits = 1;
static float* g_workspace = nullptr;
extern "C" void set_split(int splits, void* workspace) {{ g_splits = splits; g_workspace = (float*)workspace; }}
extern "C" int launch(int m, const void* x, const void* w, const void* s, const void* mn, const void* bias,
                      void* y, void* stream) {{
  return (int)ember::qgemm90::launch<{args}>(m, {n}, {k}, x, w, s, mn, y, (cudaStream_t)stream, g_splits,
                                             g_workspace);
}}
"""


def build(work: Path, code: int, n: int, k: int, group: int, bias: int, tile: tuple[int, ...]) -> Path:
    name = f"q{code}_{n}_{k}_{group}_{bias}_{'_'.join(map(str, tile))}"
    src, lib = work / f"{name}.cu", work / f"{name}.so"
    defines = []
    if tile[0] in ("rs", "ws"):
        args = ", ".join(str(a) for a in (code, group, *tile[1:5]))
        src.write_text((LAUNCHER_RS if tile[0] == "rs" else LAUNCHER_WS).format(args=args, n=n, k=k))
        tile = ()
    elif len(tile) == 4 and isinstance(tile[3], int):  # split-K: the harness sets the splits
        tile = tile[:3]
    elif len(tile) == 4:  # a probe
        defines, tile = [f"-D{tile[3]}"], tile[:3]
        name += "_" + defines[0][2:]
        src, lib = work / f"{name}.cu", work / f"{name}.so"
    if not tile:
        pass
    elif len(tile) == 3:  # wgmma (no bias: the lowering adds it after)
        args = ", ".join(str(a) for a in (code, group, *tile))
        src.write_text(LAUNCHER90.format(args=args, n=n, k=k))
    else:
        bm, bn, wm, wn, stages = tile
        args = ", ".join(str(a) for a in (code, n, k, group, bias, bm, bn, wm, wn, stages))
        src.write_text(LAUNCHER.format(threads=32 * wm * wn, args=args, bm=bm, bn=bn, n=n))
    cmd = ["nvcc", "-O3", "-std=c++17", *defines, "-gencode", "arch=compute_90a,code=sm_90a", "-shared", "-Xcompiler", "-fPIC",
           f"-I{KERNELS}", str(src), "-o", str(lib)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return lib


def packed(torch, code: int, n: int, k: int, group: int, gen):
    """Random codes, scales (and mins) in the artifact layout, and the float32 weights they stand for."""
    dev = "cuda"
    scales = (torch.rand(n, k // group, generator=gen, device=dev) * 0.02 + 0.001).half()
    s = scales.float().repeat_interleave(group, dim=1)
    mins = None
    if code == Q8:
        q = torch.randint(-127, 128, (n, k), generator=gen, device=dev, dtype=torch.int8)
        return q, scales, mins, q.float() * s
    q = torch.randint(0, 16, (n, k), generator=gen, device=dev, dtype=torch.int64)
    shifts = torch.arange(0, 32, 4, device=dev, dtype=torch.int64)
    words = (q.view(n, k // 8, 8) << shifts).sum(dim=-1)
    words = torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)  # the uint32 bits
    if code == Q4_MIN:
        mins = (torch.rand(n, k // group, generator=gen, device=dev) * -0.1).half()
        return words, scales, mins, q.float() * s + mins.float().repeat_interleave(group, dim=1)
    return words, scales, mins, (q.float() - 8) * s


def timed(torch, fn, iters: int = 20) -> float:
    for _ in range(3):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters * 1e3  # us


def main() -> int:
    import torch

    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--tiles", default="", help="comma-separated tile names (default: all)")
    parser.add_argument("--layers", default="", help="comma-separated llama3-8b layers (default: all, and extras)")
    parser.add_argument("--ms", default="", help="comma-separated token counts (default: by --quick)")
    parser.add_argument("--no-timing", action="store_true", help="check numbers only (one launch per case)")
    opts = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    work = Path(tempfile.mkdtemp(prefix="qgemm."))
    cases = []  # (scheme, layer, n, k, group, bias, tile name)
    for scheme in SCHEMES:
        for layer, (n, k) in LLAMA3_8B.items():
            if opts.layers and layer not in opts.layers.split(","):
                continue
            for tile in TILES:
                if opts.tiles and tile not in opts.tiles.split(","):
                    continue
                four_bit = tile.startswith(("rs", "ws"))
                if scheme != "q4f16" and tile not in DEFAULT and not (four_bit and scheme != "q8f16"):
                    continue
                if scheme == "q8f16" and four_bit:
                    continue
                cases.append((scheme, layer, n, k, 32, 0, tile))
    if not opts.layers:
        cases.append(("q4f16", "g128", 4096, 4096, 128, 0, "128x128x2x4s4"))
        cases.append(("q4f16", "g128", 4096, 4096, 128, 0, "wg128x128s4"))
        cases.append(("q4f16", "g128", 4096, 4096, 128, 0, "rs2x128s4"))
        cases.append(("q4f16_1", "g128", 4096, 4096, 128, 0, "rs2x128s4-k2"))
        cases.append(("q4f16_1", "smollm2_down", 576, 1536, 32, 0, "wg64x64s4"))
        cases.append(("q4f16", "bias_f16", 1536, 576, 32, 1, "64x64x2x2s4"))  # SmolLM2's gate_up, an fp16 bias
        cases.append(("q8f16", "bias_f32", 576, 576, 32, 2, "64x64x2x2s4"))
    libs = {}
    with futures.ThreadPoolExecutor(16) as pool:
        jobs = {pool.submit(build, work, SCHEMES[s], n, k, g, b, TILES[t]): (s, n, k, g, b, t)
                for s, _, n, k, g, b, t in cases}
        for job in futures.as_completed(jobs):
            libs[jobs[job]] = ctypes.CDLL(str(job.result()))
    gen = torch.Generator(device="cuda").manual_seed(0)
    rows = []
    weights: dict = {}
    for scheme, layer, n, k, group, bias, tile in cases:
        code = SCHEMES[scheme]
        key = (code, n, k, group)
        if key not in weights:
            weights.clear()
            weights[key] = packed(torch, code, n, k, group, gen)
        w, s, mn, wf = weights[key]
        w16 = wf.half()
        lib = libs[(scheme, n, k, group, bias, tile)]
        bias_t = None
        if bias:
            bias_t = torch.randn(n, device="cuda", generator=gen).to(torch.float16 if bias == 1 else torch.float32)
        ms = [1, 77, 128, 512] if opts.quick else [1, 16, 77, 128, 256, 512, 1000, 2048, 4096]
        if opts.ms:
            ms = [int(v) for v in opts.ms.split(",")]
        for m in ms:
            x = (torch.randn(m, k, device="cuda", generator=gen) * 0.5).half()
            y = torch.empty(m, n, device="cuda", dtype=torch.float16)
            stream = torch.cuda.current_stream().cuda_stream
            ptr = lambda t: ctypes.c_void_p(t.data_ptr() if t is not None else x.data_ptr())  # noqa: E731

            def run() -> None:
                lib.launch(m, ptr(x), ptr(w), ptr(s), ptr(mn), ptr(bias_t), ptr(y), ctypes.c_void_p(stream))

            spec = TILES[tile]
            splits = spec[3] if len(spec) == 4 and isinstance(spec[3], int) else 1
            if spec[0] in ("rs", "ws"):
                splits = spec[5]
            if tile.startswith(("wg", "rs", "ws")):
                workspace = torch.empty(splits * m * n, device="cuda", dtype=torch.float32)
                lib.set_split(splits, ctypes.c_void_p(workspace.data_ptr()))
            status = lib.launch(m, ptr(x), ptr(w), ptr(s), ptr(mn), ptr(bias_t), ptr(y), ctypes.c_void_p(stream))
            torch.cuda.synchronize()
            ref = x.float() @ wf.T + (bias_t.float() if bias_t is not None else 0)
            err = ((y.float() - ref).abs().max() / ref.abs().max().clamp_min(1e-6)).item()
            row = {"scheme": scheme, "layer": layer, "n": n, "k": k, "group": group, "bias": bias, "tile": tile,
                   "m": m, "rel_err": err, "status": status,
                   "ok": bool(status == 0 and err < 2e-3 and torch.isfinite(y).all().item())}
            if m >= 16 and not bias and not opts.no_timing:
                us = timed(torch, run)
                cublas = timed(torch, lambda: x @ w16.T)
                flop = 2.0 * m * n * k
                row.update(us=round(us, 2), tflops=round(flop / us / 1e6, 1), cublas_f16_us=round(cublas, 2),
                           vs_cublas_f16=round(cublas / us, 3))
            rows.append(row)
            print(json.dumps(row), flush=True)
    Path(opts.out).write_text("".join(json.dumps(r) + "\n" for r in rows))
    bad = [r for r in rows if not r["ok"]]
    print(json.dumps({"cases": len(rows), "failed": len(bad)}))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
