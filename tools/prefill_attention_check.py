#!/usr/bin/env python3
"""ember's prefill attention kernel (targets/cuda/kernels/prefill_attention.cuh) on a GPU against torch.

    python tools/prefill_attention_check.py OUT.jsonl     (on a machine with nvcc, torch and a CUDA GPU)

The kernel is compiled with nvcc for this GPU behind small host launchers and called on torch tensors: ragged
batches (one sequence of 512 or 2048 tokens, several of 1..300), causal and not, the llama3-8b, SmolLM2 and MHA
bf16 shapes; the paged kernel (the cached pages of a chunked prefill: K / V scattered into shuffled 16-key pages,
a sequence without pages); output and lse (TVM's: log2 domain) against a float64 torch reference, NaN-poisoned outputs first.
Then the time of one llama3-8b layer's prefill attention at 512 and 2048 tokens (CUDA events, median of 20),
beside torch's scaled_dot_product_attention on the same tensors. One JSON line per case; exit 1 on a failure.
"""
from __future__ import annotations

import ctypes
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

KERNELS = Path(__file__).resolve().parent.parent / "targets" / "cuda" / "kernels"
SHAPES = {  # name -> (d, h_kv, group, ctype)
    "llama3": (128, 8, 4, "__half"), "smollm2": (64, 3, 3, "__half"), "mha_bf16": (64, 8, 1, "__nv_bfloat16"),
    "gemma2": (256, 4, 2, "__half"), "gemma3_bf16": (256, 1, 4, "__nv_bfloat16"),  # head dim 256
}
SOURCE = """
#include <cuda_runtime.h>
#include "prefill_attention.cuh"
#define K(NAME, D, HKV, G, T) K2(NAME, D, HKV, G, T, false) K2(NAME##_capped, D, HKV, G, T, true)
#define K2(NAME, D, HKV, G, T, CAP) \\
  __global__ void __launch_bounds__(128) NAME##_kernel(const T* q, const int* qi, const T* k, const T* v, \\
      const int* ki, T* o, float* lse, int b, int c, float s, int w, int bs, float cap) { \\
    ember::prefill::ragged<D, HKV, G, T, CAP>(q, qi, k, v, ki, o, lse, b, c, s, w, bs, cap); } \\
  extern "C" void NAME(const void* q, const void* qi, const void* k, const void* v, const void* ki, void* o, \\
      void* lse, int b, int c, float s, int w, int bs, float cap, int tiles, int heads) { \\
    NAME##_kernel<<<dim3(tiles, heads), 128>>>((const T*)q, (const int*)qi, (const T*)k, (const T*)v, \\
        (const int*)ki, (T*)o, (float*)lse, b, c, s, w, bs, cap); } \
  __global__ void __launch_bounds__(128) NAME##_paged_kernel(const T* q, const int* qi, const T* pages, \
      const int* pi, const int* pv, const int* last, T* o, float* lse, int b, int c, float s, int w, int bs, \
      float cap) { \
    ember::prefill::paged<D, HKV, G, 16, T, CAP>(q, qi, pages, pi, pv, last, o, lse, b, c, s, w, bs, cap); } \
  extern "C" void NAME##_paged(const void* q, const void* qi, const void* pages, const void* pi, const void* pv, \
      const void* last, void* o, void* lse, int b, int c, float s, int w, int bs, float cap, int tiles, \
      int heads) { \
    NAME##_paged_kernel<<<dim3(tiles, heads), 128>>>((const T*)q, (const int*)qi, (const T*)pages, \
        (const int*)pi, (const int*)pv, (const int*)last, (T*)o, (float*)lse, b, c, s, w, bs, cap); }
"""
PAGE = 16
TOL = {"__half": 2e-3, "__nv_bfloat16": 1.6e-2}  # max abs error of the output (values are |v| <= ~3)


def build(workdir: Path) -> ctypes.CDLL:
    src = SOURCE + "".join(f"K({name}, {d}, {h}, {g}, {t})\n" for name, (d, h, g, t) in SHAPES.items())
    (workdir / "k.cu").write_text(src)
    subprocess.run(["nvcc", "-arch=sm_90", "-O3", "-std=c++17", "-shared", "-Xcompiler", "-fPIC", "-I", str(KERNELS),
                    "k.cu", "-o", "k.so"], cwd=workdir, check=True)
    return ctypes.CDLL(str(workdir / "k.so"))


def reference(q, k, v, q_lens, kv_lens, group, causal, sm_scale, window=0, softcap=0.0):
    """Row i of a sequence sits at position (kl - ql if causal else kl) + i among its keys; a window W > 0 hides
    the keys before position - W + 1 (HF's convention, the kernel's); softcap > 0: s = cap * tanh(s / cap)."""
    import torch

    outs, lses = [], []
    qo = ko = 0
    for ql, kl in zip(q_lens, kv_lens):
        qs = q[qo:qo + ql].double().transpose(0, 1)  # [hq, ql, d]
        ks = k[ko:ko + kl].double().repeat_interleave(group, 1).transpose(0, 1)
        vs = v[ko:ko + kl].double().repeat_interleave(group, 1).transpose(0, 1)
        s = qs @ ks.transpose(1, 2) * sm_scale
        if softcap:
            s = softcap * torch.tanh(s / softcap)
        i = torch.arange(ql, device=q.device)[:, None]
        j = torch.arange(kl, device=q.device)[None, :]
        pos = (kl - ql if causal else kl) + i
        if causal:
            s = s.masked_fill(j >= pos + 1, -math.inf)
        if window:
            s = s.masked_fill(j < pos - window + 1, -math.inf)
        lse = torch.logsumexp(s, -1)  # natural log; rows without keys: -inf
        p = torch.softmax(s, -1).nan_to_num(0.0)
        outs.append((p @ vs).transpose(0, 1))
        lses.append((lse / math.log(2)).transpose(0, 1))
        qo, ko = qo + ql, ko + kl
    return torch.cat(outs), torch.cat(lses)


def run_kernel(lib, name, q, k, v, q_lens, kv_lens, causal, sm_scale, window=0, by_sign=0, softcap=0.0):
    import torch

    dev = q.device
    qi = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32, device=dev)
    ki = torch.tensor([0, *torch.tensor(kv_lens).cumsum(0).tolist()], dtype=torch.int32, device=dev)
    out = torch.full_like(q, float("nan"))
    lse = torch.full(q.shape[:2], float("nan"), dtype=torch.float32, device=dev)
    tiles = -(-q.shape[0] // 64) + len(q_lens)
    getattr(lib, name + ("_capped" if softcap else ""))(ctypes.c_void_p(q.data_ptr()), ctypes.c_void_p(qi.data_ptr()), ctypes.c_void_p(k.data_ptr()),
                       ctypes.c_void_p(v.data_ptr()), ctypes.c_void_p(ki.data_ptr()), ctypes.c_void_p(out.data_ptr()),
                       ctypes.c_void_p(lse.data_ptr()), len(q_lens), int(causal), ctypes.c_float(sm_scale),
                       int(window), int(by_sign), ctypes.c_float(softcap), tiles, q.shape[1])
    return out, lse


def run_paged(lib, name, q, k, v, q_lens, kv_lens, causal, sm_scale, window=0, by_sign=0, softcap=0.0):
    """The paged kernel on k / v scattered into 16-key pages in a shuffled order (a last page part full)."""
    import torch

    dev = q.device
    counts = [-(-n // PAGE) for n in kv_lens]
    total = sum(counts)
    order = torch.randperm(total + 3, generator=torch.Generator().manual_seed(1))[:total].tolist()
    pages = torch.full((total + 3, 2, k.shape[1], PAGE, k.shape[2]), float("nan"), dtype=k.dtype, device=dev)
    values, at, ko = [], 0, 0
    for n, c in zip(kv_lens, counts):
        for p in range(c):
            page = order[at]
            at += 1
            values.append(page)
            rows = slice(ko + p * PAGE, ko + min((p + 1) * PAGE, n))
            m = rows.stop - rows.start
            pages[page, 0, :, :m] = k[rows].transpose(0, 1)
            pages[page, 1, :, :m] = v[rows].transpose(0, 1)
        ko += n
    qi = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32, device=dev)
    pi = torch.tensor([0, *torch.tensor(counts).cumsum(0).tolist()], dtype=torch.int32, device=dev)
    pv = torch.tensor(values or [0], dtype=torch.int32, device=dev)
    last = torch.tensor([n - (c - 1) * PAGE if c else 0 for n, c in zip(kv_lens, counts)], dtype=torch.int32,
                        device=dev)
    out = torch.full_like(q, float("nan"))
    lse = torch.full(q.shape[:2], float("nan"), dtype=torch.float32, device=dev)
    tiles = -(-q.shape[0] // 64) + len(q_lens)
    ptr = lambda t: ctypes.c_void_p(t.data_ptr())  # noqa: E731
    getattr(lib, name + ("_capped" if softcap else "") + "_paged")(ptr(q), ptr(qi), ptr(pages), ptr(pi), ptr(pv), ptr(last), ptr(out), ptr(lse),
                                  len(q_lens), int(causal), ctypes.c_float(sm_scale), int(window), int(by_sign),
                                  ctypes.c_float(softcap), tiles, q.shape[1])
    return out, lse


def check(lib, name, q_lens, kv_lens, causal, seed=0, paged=False, window=0, by_sign="", softcap=0.0) -> dict:
    """by_sign "local": the kernel is told to window by sign and gets -sm_scale (a local layer); "global": it gets
    +sm_scale, so the window must not apply."""
    import torch

    d, h_kv, group, ctype = SHAPES[name]
    dtype = torch.float16 if ctype == "__half" else torch.bfloat16
    g = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randn(sum(q_lens), h_kv * group, d, device="cuda", generator=g).to(dtype)
    k = torch.randn(sum(kv_lens), h_kv, d, device="cuda", generator=g).to(dtype)
    v = torch.randn(sum(kv_lens), h_kv, d, device="cuda", generator=g).to(dtype)
    sm_scale = 1 / math.sqrt(d)
    passed = -sm_scale if by_sign == "local" else sm_scale
    out, lse = (run_paged if paged else run_kernel)(lib, name, q, k, v, q_lens, kv_lens, causal, passed, window,
                                                    1 if by_sign else 0, softcap)
    torch.cuda.synchronize()
    ref_window = 0 if by_sign == "global" else window
    ref_out, ref_lse = reference(q, k, v, q_lens, kv_lens, group, causal, sm_scale, ref_window, softcap)
    seen = torch.isfinite(ref_lse)
    err = float((out.double() - ref_out).abs().max())
    lse_err = float((lse.double() - ref_lse)[seen].abs().max()) if seen.any() else 0.0
    empty_ok = bool(((lse[~seen] == -5e4).all() and (out[~seen] == 0).all()).item()) if (~seen).any() else True
    ok = err < TOL[ctype] and lse_err < 1e-3 and empty_ok and not out.isnan().any().item()
    return {"case": name, "paged": paged, "q_lens": q_lens, "kv_lens": kv_lens, "causal": causal, "window": window,
            "by_sign": by_sign, "softcap": softcap, "max_err": err,
            "lse_max_err": lse_err, "empty_rows_ok": empty_ok, "ok": bool(ok)}


def timing(lib, n: int) -> dict:
    import torch

    d, h_kv, group, _ = SHAPES["llama3"]
    q = torch.randn(n, h_kv * group, d, device="cuda", dtype=torch.float16)
    k = torch.randn(n, h_kv, d, device="cuda", dtype=torch.float16)
    v = torch.randn(n, h_kv, d, device="cuda", dtype=torch.float16)
    qt, kt, vt = (x.transpose(0, 1).unsqueeze(0) for x in (q, k, v))

    def median_us(fn) -> float:
        fn()
        times = []
        for _ in range(20):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) * 1e3)
        return sorted(times)[len(times) // 2]

    ours = median_us(lambda: run_kernel(lib, "llama3", q, k, v, [n], [n], True, 1 / math.sqrt(d)))
    sdpa = median_us(lambda: torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, is_causal=True,
                                                                              enable_gqa=True))
    flops = 4 * n * n / 2 * d * h_kv * group
    paged = median_us(lambda: run_paged(lib, "llama3", q, k, v, [n], [n], False, 1 / math.sqrt(d)))
    return {"timing": "llama3 layer", "tokens": n, "ember_us": round(ours, 1), "torch_sdpa_us": round(sdpa, 1),
            "ember_tflops": round(flops / ours / 1e6, 1), "paged_noncausal_us": round(paged, 1),
            "paged_tflops": round(2 * flops / paged / 1e6, 1)}


def main(out_path: str) -> int:
    rows, failed = [], 0
    with tempfile.TemporaryDirectory() as tmp:
        lib = build(Path(tmp))
        cases = [("llama3", [512], [512], True), ("llama3", [2048], [2048], True),
                 ("llama3", [37, 1, 130, 64, 300], [37, 1, 130, 64, 300], True),
                 ("llama3", [100, 20], [160, 20], True),  # more keys than queries (a later chunk's view)
                 ("llama3", [65, 3], [65, 3], False), ("smollm2", [129, 17, 5], [129, 17, 5], True),
                 ("smollm2", [8], [3], True),  # rows that see no key
                 ("mha_bf16", [200, 64], [200, 64], True)]
        paged = [("llama3", [2048], [2048], False), ("llama3", [512], [1536], False),
                 ("llama3", [37, 1, 130, 64, 300], [37, 1, 130, 64, 300], True),
                 ("llama3", [100, 20], [160, 20], True), ("smollm2", [129, 17, 5], [300, 0, 33], False),
                 ("mha_bf16", [200, 64], [211, 16], False)]
        # sliding windows (HF convention): shorter than a tile, not a multiple of one, longer than some sequences;
        # paged: the cached keys before a chunk, of which the window leaves a part or none to the last rows
        windowed = [("llama3", [512], [512], True, 0, False, 100), ("llama3", [37, 1, 130, 300], [37, 1, 130, 300],
                     True, 0, False, 64), ("smollm2", [129, 17], [129, 17], True, 0, False, 9),
                    ("llama3", [300, 20], [1000, 20], False, 0, True, 256), ("smollm2", [129, 5], [300, 33], False,
                     0, True, 70), ("mha_bf16", [200], [211], False, 0, True, 150)]
        # head dim 256 (Gemma): plain, ragged, paged; windows by sm_scale's sign (local and global layers) and
        # tanh soft-capping (cap 1: every score bent), with the window too
        gemma = [("gemma2", [512], [512], True), ("gemma2", [37, 1, 130, 300], [37, 1, 130, 300], True),
                 ("gemma3_bf16", [200, 64], [200, 64], True), ("gemma3_bf16", [65, 3], [65, 3], False)]
        gemma_paged = [("gemma2", [300, 20], [1000, 20], False), ("gemma3_bf16", [129, 5], [300, 33], False)]
        signed = [("gemma2", [300], [300], True, 0, False, 100, "local"),
                  ("gemma2", [300], [300], True, 0, False, 100, "global"),
                  ("gemma2", [300, 20], [1000, 20], False, 0, True, 256, "local"),
                  ("gemma3_bf16", [129, 17], [129, 17], True, 0, False, 9, "local"),
                  ("gemma3_bf16", [129, 5], [300, 33], False, 0, True, 70, "global"),
                  ("gemma2", [512], [512], True, 0, False, 0, "", 1.0),
                  ("gemma2", [129, 17], [129, 17], True, 0, False, 40, "local", 1.0),
                  ("gemma2", [300, 20], [1000, 20], False, 0, True, 0, "", 1.0),
                  ("llama3", [512], [512], True, 0, False, 0, "", 2.0)]
        gemma_cases = [(*c, 0, False) for c in gemma] + [(*c, 0, True) for c in gemma_paged] + signed
        for case in [(*c, 0, False) for c in cases] + [(*c, 0, True) for c in paged] + windowed + gemma_cases:
            row = check(lib, *case)
            failed += not row["ok"]
            rows.append(row)
            print(json.dumps(row), flush=True)
        for n in (512, 2048):
            row = timing(lib, n)
            rows.append(row)
            print(json.dumps(row), flush=True)
    Path(out_path).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]) if len(sys.argv) == 2 else __doc__)
