#!/usr/bin/env python3
"""ember's decode GEMV (targets/cuda/native_gemv.py) beside TVM's stock dlight GEMV, per layer shape.

Here (no GPU, nvcc on PATH):
    python tools/gemv_bench.py build DIR [--quick]
compiles, for every (scheme, shape), ember's kernel in each swept launch config and the generic lowering
(lower_quant.py scheduled by dlight, what decode1 used before) into one TIR library DIR/gemv.so for sm_90, and
writes DIR/cases.json. On the GPU (torch there; runtime-only TVM on PYTHONPATH):
    python tools/gemv_bench.py run DIR OUT.jsonl
checks every kernel against torch (the packed arrays dequantized on the GPU, fp64 matmul), then times each over
CUDA-graph replays that rotate weight copies (> 200 MB, well over the 50 MB L2), beside a 2 GiB device copy
measured in the same call. One JSON line per kernel; a table last.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

SCHEMES = {  # ember scheme -> (bits, group, has_min)
    "q4f16": (4, 32, False),
    "q4f16_1": (4, 32, True),
    "q8f16": (8, 32, False),
}
SHAPES = {  # Llama-3-8B, per layer: (N, K)
    "qkv": (6144, 4096),
    "o": (4096, 4096),
    "gate_up": (28672, 4096),
    "down": (4096, 14336),
    "lm_head": (128256, 4096),
}
# GemvConfig fields: (warps, rows per warp, steps in flight, words per fp16 partial, cp.async ring)
SWEEP = [(4, 1, 4, 2, 0), (4, 2, 4, 2, 0), (4, 4, 4, 2, 0), (8, 2, 4, 2, 0), (4, 2, 2, 2, 0), (4, 2, 4, 1, 0),
         (4, 2, 4, 4, 0), (4, 2, 4, 2, 1), (4, 1, 8, 2, 1), (4, 4, 4, 2, 1), (4, 2, 8, 2, 1), (8, 1, 4, 2, 1),
         (8, 2, 4, 2, 1)]
SWEEP8 = [(4, 2, 4, 2, 0), (4, 2, 4, 2, 1), (4, 4, 4, 2, 1), (4, 1, 8, 2, 1), (8, 2, 4, 2, 1)]
QUICK = [(4, 2, 4, 2, 0), (4, 2, 4, 2, 1)]
# correctness only: a partial last step (K/32 = 33), rows not filling the last block, a bias
ODD = (1000, 1056)


CONFIRM = [(4, 2, 4, 2, 0), (8, 2, 4, 2, 0), (4, 2, 2, 2, 0), (4, 2, 4, 2, 1), (8, 2, 4, 2, 1)]
CONFIG_SETS = {"sweep": (SWEEP, SWEEP8), "confirm": (CONFIRM, CONFIRM), "quick": (QUICK, QUICK)}


def cases(quick: bool, confirm: bool = False, configs: str | None = None) -> list[dict]:
    from ember.ir.ops_quant import QuantFormat
    from ember.targets.cuda import native_gemv

    out = []
    for scheme, (bits, group, has_min) in SCHEMES.items():
        code = native_gemv.scheme_code(QuantFormat(bits, group, has_min), 4096)
        for shape, (n, k) in SHAPES.items():
            if (shape == "lm_head") != (scheme == "q8f16") and shape != "o":
                continue  # 4-bit: the layers; 8-bit: the LM head (+ o for a small shape)
            out.append({"scheme": scheme, "shape": shape, "n": n, "k": k, "kind": "stock"})
            name = configs or ("quick" if quick else "confirm" if confirm else "sweep")
            for cfg in CONFIG_SETS[name][bits == 8]:
                if native_gemv.shared_bytes(code, k, native_gemv.GemvConfig(*cfg)) <= native_gemv.SHARED_LIMIT:
                    out.append({"scheme": scheme, "shape": shape, "n": n, "k": k, "kind": "ember",
                                "config": list(cfg)})
        for cfg in QUICK:
            out.append({"scheme": scheme, "shape": "odd", "n": ODD[0], "k": ODD[1], "kind": "ember",
                        "config": list(cfg)})
        out.append({"scheme": scheme, "shape": "odd", "n": ODD[0], "k": ODD[1], "kind": "ember", "bias": True,
                    "config": list(QUICK[0])})
    for i, case in enumerate(out):
        if case["kind"] == "ember":  # the config ember's lowering picks for this layer
            default = native_gemv.choose_config(native_gemv.scheme_code(QuantFormat(*SCHEMES[case["scheme"]]),
                                                                        case["k"]), case["n"], case["k"])
            case["default"] = list(default.__dict__.values()) == case["config"]
        tag = "_".join(map(str, case.get("config", [])))
        case["func"] = f"f{i:03d}_{case['scheme']}_{case['shape']}_{case['kind']}{'_' + tag if tag else ''}"
        case["func"] += "_bias" if case.get("bias") else ""
    return out


def _primfunc(case: dict):
    """The PrimFunc ember's lowering makes for this case, through the cuda relax pipeline (dlight for stock)."""
    import tvm
    from tvm.relax.frontend import nn

    from ember.ir.ops_quant import QuantFormat
    from ember.targets.cuda import native_gemv, pipeline
    from ember.targets.lower import LOWERINGS

    bits, group, has_min = SCHEMES[case["scheme"]]
    fmt = QuantFormat(bits, group, has_min)
    n, k = case["n"], case["k"]
    node = SimpleNamespace(op="quant_linear", attrs={"scheme": case["scheme"], **fmt.attrs(), "in_features": k})
    it = SimpleNamespace(dequant_stage=True)
    if case["kind"] == "ember":
        cfg = native_gemv.GemvConfig(*case["config"])
        lower = lambda args: native_gemv.lower_quant_linear(it, node, args, config=cfg)  # noqa: E731
    else:
        lower = lambda args: LOWERINGS["quant_linear"](it, node, args)  # noqa: E731

    class Two(nn.Module):
        def forward(self, x, w, s):
            return lower([x, w, s])

    class Three(nn.Module):
        def forward(self, x, w, s, m):
            return lower([x, w, s, m])

    class TwoBias(nn.Module):
        def forward(self, x, w, s, b):
            return lower([x, w, s, b])

    class ThreeBias(nn.Module):
        def forward(self, x, w, s, m, b):
            return lower([x, w, s, m, b])

    pieces = [nn.spec.Tensor(list(t.shape), t.dtype) for t in fmt.piece_types(n, k)]
    names = ["w", "s", "m"][:len(pieces)]
    if case.get("bias"):
        pieces, names = pieces + [nn.spec.Tensor([n], "float16")], names + ["b"]
    spec = {"forward": {"x": nn.spec.Tensor([1, 1, k], "float16"), **dict(zip(names, pieces)),
                        "$": {"param_mode": "none", "effect_mode": "none"}}}
    module = {(False, False): Two, (True, False): Three, (False, True): TwoBias, (True, True): ThreeBias}
    mod, _ = module[(has_min, bool(case.get("bias")))]().export_tvm(spec=spec)
    target = pipeline.cuda_target(["sm_90"])
    with tvm.transform.PassContext(opt_level=3, config=pipeline.PASS_CONFIG):
        mod = pipeline.cuda_relax_pipeline(target)(mod)
    funcs = [f for _, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
    assert len(funcs) == 1, [gv.name_hint for gv, _ in mod.functions_items()]
    return funcs[0]


def _prepare() -> None:
    """The stub driver before the first `import tvm` (a process that already imported tvm keeps it)."""
    if "tvm" not in sys.modules:
        from ember.targets.cuda.stub_driver import prepare_cuda_compile_process

        prepare_cuda_compile_process()


def build(out: Path, quick: bool, confirm: bool = False, configs: str | None = None) -> None:
    _prepare()
    build_cases(out, cases(quick, confirm, configs))


def build_cases(out: Path, todo: list[dict]) -> None:
    """DIR/gemv.so (sm_90) with one PrimFunc per case, and DIR/cases.json."""
    _prepare()
    from ember.targets.cuda import native_gemv

    native_gemv.SCHEMES = (native_gemv.Q4, native_gemv.Q4_MIN, native_gemv.Q8)  # the 8-bit kernel too, to compare
    compile_cases(out, todo, _primfunc, "gemv.so")


def compile_cases(out: Path, todo: list[dict], primfunc, library: str) -> None:
    """DIR/<library> (sm_90) with one PrimFunc per case (primfunc(case), named case["func"]), and DIR/cases.json
    (lowbatch_bench.py builds its library with it too)."""
    _prepare()
    import tvm

    from ember.targets.cuda import pipeline
    from ember.targets.cuda.nvcc import multi_arch_compile

    out.mkdir(parents=True, exist_ok=True)
    pipeline.preload_tensor_intrinsics()
    start = time.perf_counter()
    funcs = {case["func"]: primfunc(case).with_attr("global_symbol", case["func"]) for case in todo}
    print(f"{len(funcs)} PrimFuncs in {time.perf_counter() - start:.1f} s", flush=True)
    target = pipeline.cuda_target(["sm_90"])
    start = time.perf_counter()
    with target, tvm.transform.PassContext(opt_level=3, config=pipeline.PASS_CONFIG), \
            multi_arch_compile(["sm_90"]) as stats:
        lib = tvm.compile(tvm.IRModule(funcs), target=target)
    lib.export_library(str(out / library))
    print(f"compiled in {time.perf_counter() - start:.1f} s (nvcc {stats.seconds:.1f} s)", flush=True)
    (out / "cases.json").write_text(json.dumps(todo, indent=1))


# -- on the GPU ------------------------------------------------------------------------------------------------------
def _packed(torch, scheme: str, n: int, k: int, gen, schemes: dict | None = None):
    """Random packed weights: full-range codes, signed fp16 scales, mins near -8 s (as Q4_1 has them)."""
    bits, group, has_min = (schemes or SCHEMES)[scheme]
    g = -(-k // group)
    if bits == 4:
        w = torch.randint(-2**31, 2**31, (n, k // 8), dtype=torch.int64, device="cuda", generator=gen)
        w = w.to(torch.int32).view(torch.uint32)
    else:
        w = torch.randint(-128, 128, (n, k), dtype=torch.int8, device="cuda", generator=gen)
    mag = torch.rand((n, g), device="cuda", generator=gen) * 0.01 + 0.005
    sign = torch.where(torch.rand((n, g), device="cuda", generator=gen) < 0.5, -1.0, 1.0)
    s = (mag * (1.0 if has_min else sign)).half()
    pieces = [w, s]
    if has_min:
        pieces.append((-s.float() * (6 + 3 * torch.rand((n, g), device="cuda", generator=gen))).half())
    return pieces


def _dequant(torch, scheme: str, pieces, k: int, schemes: dict | None = None):
    bits, group, has_min = (schemes or SCHEMES)[scheme]
    w = pieces[0]
    if bits == 4:
        shifts = torch.arange(0, 32, 4, device="cuda", dtype=torch.int64)
        words = w.view(torch.int32).to(torch.int64) & 0xFFFFFFFF
        q = ((words[:, :, None] >> shifts) & 15).reshape(w.shape[0], -1)[:, :k].double()
    else:
        q = w.double()
    expand = torch.arange(k, device="cuda") // group
    s = pieces[1].double()[:, expand]
    if has_min:
        return s * q + pieces[2].double()[:, expand]
    return s * (q - 8) if bits == 4 else s * q


def _graph_time(torch, tvm_ffi, launch, copies: int, per_graph: int, replays: int = 15) -> float:
    """Median µs per launch over CUDA-graph replays; launch(i) runs on weight copy i % copies."""
    for i in range(copies):
        launch(i)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with tvm_ffi.use_torch_stream(torch.cuda.graph(graph)):
        for i in range(per_graph):
            launch(i % copies)
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(replays):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        graph.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) * 1e3 / per_graph)
    return sorted(times)[len(times) // 2]


def copy_bandwidth(torch) -> float:
    """TB/s of a 2 GiB device-to-device copy, bytes read + written (median of 10)."""
    a = torch.empty(1 << 31, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    a.fill_(1)
    for _ in range(3):
        b.copy_(a)
    times = []
    for _ in range(10):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        b.copy_(a)
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e) / 1e3)
    del a, b
    return 2 * (1 << 31) / sorted(times)[5] / 1e12


def run(root: Path, out_path: Path) -> int:
    import torch
    from ember.runtime.tvm_import import ensure_device_runtime, import_tvm

    tvm = import_tvm()
    ensure_device_runtime("cuda")
    import tvm_ffi

    lib = tvm.runtime.load_module(str(root / "gemv.so"))
    todo = json.loads((root / "cases.json").read_text())
    copy_tbs = copy_bandwidth(torch)
    rows, failed = [], 0
    out = out_path.open("w")
    header = {"device": torch.cuda.get_device_name(), "copy_tb_s": round(copy_tbs, 3)}
    out.write(json.dumps(header) + "\n")
    print(json.dumps(header), flush=True)
    gen = torch.Generator(device="cuda")
    by_shape: dict[tuple, list[dict]] = {}
    for case in todo:
        by_shape.setdefault((case["scheme"], case["shape"]), []).append(case)
    for (scheme, shape), group in by_shape.items():
        n, k = group[0]["n"], group[0]["k"]
        gen.manual_seed(hash((scheme, shape)) & 0xFFFF)
        first = _packed(torch, scheme, n, k, gen)
        nbytes = sum(p.numel() * p.element_size() for p in first)
        copies = max(2, -(-256_000_000 // nbytes))
        weights = [first] + [_packed(torch, scheme, n, k, gen) for _ in range(copies - 1)]
        ref_w = _dequant(torch, scheme, first, k)
        xs = [torch.randn((1, 1, k), device="cuda", generator=gen).half()]
        xs.append((xs[0].float() * 300).half())  # large activations: fp16 partial sums must not overflow
        spikes = xs[0].clone()
        spikes[0, 0, ::997] = 6000.0  # a few massive activations (as in some Llama layers)
        xs.append(spikes)
        bias = torch.randn((n,), device="cuda", generator=gen).half()
        refs = [(ref_w @ x.double().reshape(-1)).reshape(1, 1, n) for x in xs]
        tvm_w = [[tvm.runtime.from_dlpack(p) for p in ps] for ps in weights]
        tvm_x = [tvm.runtime.from_dlpack(x) for x in xs]
        tvm_b = tvm.runtime.from_dlpack(bias)
        y = torch.empty((1, 1, n), dtype=torch.float16, device="cuda")
        tvm_y = tvm.runtime.from_dlpack(y)
        for case in group:
            f = lib[case["func"]]
            extra = [tvm_b] if case.get("bias") else []
            errs = []
            for x, ref in zip(tvm_x, refs):
                ref = ref + bias.double() if extra else ref
                y.fill_(float("nan"))
                f(x, *tvm_w[0], *extra, tvm_y)
                torch.cuda.synchronize()
                diff = (y.double() - ref)
                errs.append({"rel_l2": float(diff.norm() / ref.norm()),
                             "max_abs_rel": float(diff.abs().max() / ref.abs().max()),
                             "finite": bool(torch.isfinite(y).all())})
            us = _graph_time(torch, tvm_ffi, lambda i: f(tvm_x[0], *tvm_w[i % copies], *extra, tvm_y), copies,
                             per_graph=max(copies, 40))
            # x * 300 overflows fp16 outputs of the 8-bit head (|y| > 65504) in every kernel: judged only where the
            # reference fits in fp16
            ok = all(e["rel_l2"] < 2e-3 and e["finite"] for e, r in zip(errs, refs) if r.abs().max() < 60000)
            failed += not ok
            row = {"scheme": scheme, "shape": shape, "n": n, "k": k, "kind": case["kind"],
                   "config": case.get("config"), "default": case.get("default", False), "bias": bool(extra),
                   "us": round(us, 2),
                   "tb_s": round(nbytes / us / 1e6, 3), "of_copy": round(nbytes / us / 1e6 / copy_tbs, 3),
                   "bytes": nbytes, "err_x1": errs[0], "err_x300": errs[1], "err_spikes": errs[2], "ok": ok}
            rows.append(row)
            out.write(json.dumps(row) + "\n")
            out.flush()
        del weights, tvm_w
        torch.cuda.empty_cache()
    print(f"\ncopy bandwidth {copy_tbs:.2f} TB/s; failures: {failed}")
    table = [f"{'scheme':8} {'shape':8} {'kind':6} {'config':10} {'us':>7} {'TB/s':>5} {'copy%':>5} {'err':>7} "
             f"{'err300':>7} {'errspk':>7} ok"]
    for r in rows:
        cfg = "".join(map(str, r["config"])) if r["config"] else "-"
        table.append(f"{r['scheme']:8} {r['shape']:8} {r['kind']:6} {cfg:10} {r['us']:7.2f} {r['tb_s']:5.2f} "
                     f"{100 * r['of_copy']:5.1f} {r['err_x1']['rel_l2']:7.1e} {r['err_x300']['rel_l2']:7.1e} "
                     f"{r['err_spikes']['rel_l2']:7.1e} {r['ok']}")
    out_path.with_suffix(".txt").write_text("\n".join(table) + "\n")
    print("\n".join(line for line, r in zip(table[1:], rows) if not r["ok"]))
    print(f"{'scheme':8} {'shape':8} {'stock us':>8} {'TB/s':>5} | {'best ember':10} {'us':>7} {'TB/s':>5} "
          f"{'copy%':>5} {'x stock':>7} | {'default':>7}")
    for key in dict.fromkeys((r["scheme"], r["shape"]) for r in rows):
        mine = [r for r in rows if (r["scheme"], r["shape"]) == key]
        stock = next((r for r in mine if r["kind"] == "stock"), None)
        ember = [r for r in mine if r["kind"] == "ember" and r["ok"] and not r["bias"]]
        if not ember:
            continue
        best = min(ember, key=lambda r: r["us"])
        dflt = next((r["us"] for r in ember if r["default"]), float("nan"))
        st = f"{stock['us']:8.2f} {stock['tb_s']:5.2f}" if stock else f"{'-':>8} {'-':>5}"
        ratio = stock["us"] / best["us"] if stock else float("nan")
        print(f"{key[0]:8} {key[1]:8} {st} | {''.join(map(str, best['config'])):10} {best['us']:7.2f} "
              f"{best['tb_s']:5.2f} {100 * best['of_copy']:5.1f} {ratio:7.2f} | {dflt:7.2f}")
    return 1 if failed else 0


def profile(root: Path, funcs: list[str]) -> None:
    """Each named kernel twice on fresh data, nothing else (run under ncu)."""
    import torch
    from ember.runtime.tvm_import import ensure_device_runtime, import_tvm

    tvm = import_tvm()
    ensure_device_runtime("cuda")
    lib = tvm.runtime.load_module(str(root / "gemv.so"))
    todo = {c["func"]: c for c in json.loads((root / "cases.json").read_text())}
    gen = torch.Generator(device="cuda")
    gen.manual_seed(0)
    for name in funcs:
        case = todo[name]
        pieces = [tvm.runtime.from_dlpack(p) for p in _packed(torch, case["scheme"], case["n"], case["k"], gen)]
        x = tvm.runtime.from_dlpack(torch.randn((1, 1, case["k"]), device="cuda", generator=gen).half())
        y = tvm.runtime.from_dlpack(torch.empty((1, 1, case["n"]), dtype=torch.float16, device="cuda"))
        for _ in range(2):
            lib[name](x, *pieces, y)
        torch.cuda.synchronize()
        print(name, case["scheme"], case["shape"], case.get("config"), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("dir", type=Path)
    b.add_argument("--quick", action="store_true")
    b.add_argument("--confirm", action="store_true", help="the default configs and the runners-up only")
    b.add_argument("--configs", choices=sorted(CONFIG_SETS), help="which launch configs to build")
    r = sub.add_parser("run")
    r.add_argument("dir", type=Path)
    r.add_argument("out", type=Path)
    pr = sub.add_parser("profile")
    pr.add_argument("dir", type=Path)
    pr.add_argument("funcs", nargs="+")
    args = parser.parse_args()
    if args.cmd == "build":
        build(args.dir, args.quick, args.confirm, args.configs)
        return 0
    if args.cmd == "profile":
        profile(args.dir, args.funcs)
        return 0
    return run(args.dir, args.out)


if __name__ == "__main__":
    sys.exit(main())
