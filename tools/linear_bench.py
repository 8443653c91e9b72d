#!/usr/bin/env python3
"""ember's fp16-weight decode kernels (targets/cuda/native_linear.py) beside the stock lowering and torch, per
Llama-3-8B layer shape: the batch-1 GEMV (decode1) and the tensor-core kernel of the batched decode.

Here (no GPU, nvcc on PATH):
    python tools/linear_bench.py build DIR [--configs sweep|confirm|default]
compiles, for every shape, ember's kernels in each swept launch config and the generic `linear` lowering (dlight,
what q0f16 decode ran before) into DIR/linear.so for sm_90, with DIR/cases.json. On the GPU (torch there;
runtime-only TVM on PYTHONPATH):
    python tools/linear_bench.py run DIR OUT.jsonl [--budget S]
checks every kernel against an fp64 matmul of the same fp16 operands (outputs NaN-poisoned first; torch's fp16
matmul beside it for scale) at batch 1, 4, 16, 64 (the GEMV at 1), then times each over CUDA-graph replays that
rotate weight copies bigger than L2 (gemv_bench's timing), torch's F.linear too, beside a 2 GiB device copy.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gemv_bench as gb  # noqa: E402  (timing, copy bandwidth, the stub driver)

SHAPES = gb.SHAPES
ODD = (1000, 1048)  # correctness only: rows not filling a block, a partial k-tile, a bias
GEMV_SWEEP = [(4, 2, 4), (4, 4, 4), (8, 2, 4), (4, 2, 8), (4, 1, 8), (8, 1, 8)]  # (warps, rows, depth)
MMA_SWEEP = [(8, 4, 1, 4), (4, 4, 1, 4), (8, 2, 1, 4), (4, 2, 1, 8), (8, 4, 2, 2), (4, 4, 2, 4)]  # (w, nt, ch, d)
CONFIRM_GEMV = [(8, 2, 4), (8, 1, 8)]
CONFIRM_MMA = [(8, 4, 2, 2), (4, 4, 4, 2), (8, 2, 4, 2), (4, 4, 2, 2), (8, 2, 2, 2)]
BATCHES = (16, 1, 4, 64, 2, 8, 32)  # batch 16 first: the target, measured before any budget runs out
CHECK_BATCHES = (1, 4, 16, 64)


def cases(configs: str = "sweep") -> list[dict]:
    from ember.targets.cuda import native_linear as nl

    out = []
    for shape, (n, k) in list(SHAPES.items()) + [("odd", ODD)]:
        odd = shape == "odd"
        gemv_set, mma_set = (CONFIRM_GEMV, CONFIRM_MMA) if configs == "confirm" else (GEMV_SWEEP, MMA_SWEEP)
        gemvs = [nl.choose_gemv(n, k)] if odd or configs == "default" else [nl.GemvConfig(*c) for c in gemv_set]
        mmas = [nl.choose_mma(n, k)] if odd or configs == "default" else [nl.MmaConfig(*c) for c in mma_set]
        if not odd:
            out.append({"shape": shape, "n": n, "k": k, "kind": "stock", "batched": False})
            out.append({"shape": shape, "n": n, "k": k, "kind": "stock", "batched": True})
        for cfg in gemvs:
            out.append({"shape": shape, "n": n, "k": k, "kind": "ember", "batched": False, "bias": odd,
                        "config": list(cfg.__dict__.values()), "default": cfg == nl.choose_gemv(n, k)})
        for cfg in mmas:
            out.append({"shape": shape, "n": n, "k": k, "kind": "ember", "batched": True, "bias": odd,
                        "config": list(cfg.__dict__.values()), "default": cfg == nl.choose_mma(n, k)})
    for i, case in enumerate(out):
        tag = "_".join(map(str, case.get("config", [])))
        case["func"] = (f"f{i:03d}_{case['shape']}_{case['kind']}_{'mma' if case['batched'] else 'gemv'}"
                        f"{'_' + tag if tag else ''}")
    return out


def _primfunc(case: dict):
    import tvm
    from tvm.relax.frontend import nn

    from ember.targets.cuda import native_linear as nl
    from ember.targets.cuda import pipeline
    from ember.targets.lower import LOWERINGS

    n, k = case["n"], case["k"]
    node = SimpleNamespace(op="linear", attrs={})
    it = SimpleNamespace(dequant_stage=True, symbols={}, module=None)
    if case["kind"] == "ember":
        gemv = None if case["batched"] else nl.GemvConfig(*case["config"])
        mma = nl.MmaConfig(*case["config"]) if case["batched"] else None

        def lower(args):
            result = nl.lower_linear(it, node, args, gemv=gemv, mma=mma)
            assert result is not None, case
            return result
    else:
        lower = lambda args: LOWERINGS["linear"](it, node, args)  # noqa: E731

    class Plain(nn.Module):
        def forward(self, x, w):
            return lower([x, w])

    class Biased(nn.Module):
        def forward(self, x, w, b):
            return lower([x, w, b])

    lead = ["batch", 1] if case["batched"] else [1, 1]
    spec = {"x": nn.spec.Tensor([*lead, k], "float16"), "w": nn.spec.Tensor([n, k], "float16")}
    if case.get("bias"):
        spec["b"] = nn.spec.Tensor([n], "float16")
    spec = {"forward": {**spec, "$": {"param_mode": "none", "effect_mode": "none"}}}
    mod, _ = (Biased if case.get("bias") else Plain)().export_tvm(spec=spec)
    target = pipeline.cuda_target(["sm_90"])
    with tvm.transform.PassContext(opt_level=3, config=pipeline.PASS_CONFIG):
        mod = pipeline.cuda_relax_pipeline(target)(mod)
    funcs = [(gv.name_hint, f) for gv, f in mod.functions_items()
             if isinstance(f, tvm.tirx.PrimFunc) and not gv.name_hint.startswith("shape_func")]
    assert len(funcs) == 1, [name for name, _ in funcs]
    return funcs[0][1]


def build(out: Path, configs: str) -> None:
    gb._prepare()
    import tvm

    from ember.targets.cuda import pipeline
    from ember.targets.cuda.nvcc import multi_arch_compile

    out.mkdir(parents=True, exist_ok=True)
    pipeline.preload_tensor_intrinsics()
    todo = cases(configs)
    start = time.perf_counter()
    funcs = {c["func"]: _primfunc(c).with_attr("global_symbol", c["func"]) for c in todo}
    print(f"{len(funcs)} PrimFuncs in {time.perf_counter() - start:.1f} s", flush=True)
    target = pipeline.cuda_target(["sm_90"])
    start = time.perf_counter()
    with target, tvm.transform.PassContext(opt_level=3, config=pipeline.PASS_CONFIG), \
            multi_arch_compile(["sm_90"]) as stats:
        lib = tvm.compile(tvm.IRModule(funcs), target=target)
    lib.export_library(str(out / "linear.so"))
    print(f"compiled in {time.perf_counter() - start:.1f} s (nvcc {stats.seconds:.1f} s)", flush=True)
    (out / "cases.json").write_text(json.dumps(todo, indent=1))


# -- on the GPU ------------------------------------------------------------------------------------------------------
def _weights(torch, n: int, k: int, gen):
    return (torch.randn((n, k), device="cuda", generator=gen) * 0.02).half()


def run(root: Path, out_path: Path, budget: float) -> int:
    import torch
    from ember.runtime.tvm_import import ensure_device_runtime, import_tvm

    t0 = time.perf_counter()
    tvm = import_tvm()
    ensure_device_runtime("cuda")
    import tvm_ffi

    lib = tvm.runtime.load_module(str(root / "linear.so"))
    todo = json.loads((root / "cases.json").read_text())
    copy_tbs = gb.copy_bandwidth(torch)
    out = out_path.open("w")
    header = {"device": torch.cuda.get_device_name(), "copy_tb_s": round(copy_tbs, 3)}
    out.write(json.dumps(header) + "\n")
    print(json.dumps(header), flush=True)
    gen = torch.Generator(device="cuda")
    by_shape: dict[str, list[dict]] = {}
    for case in todo:
        by_shape.setdefault(case["shape"], []).append(case)
    failed = 0
    dl = tvm.runtime.from_dlpack
    for shape, group in by_shape.items():
        n, k = group[0]["n"], group[0]["k"]
        gen.manual_seed(len(shape) * 7919 + n)
        w = _weights(torch, n, k, gen)
        bias = torch.randn((n,), device="cuda", generator=gen).half()
        inputs = {}
        for b in CHECK_BATCHES:
            x = torch.randn((b, 1, k), device="cuda", generator=gen).half()
            if b == 64:
                x[:, 0, ::997] = 3000.0  # a few massive activations
            inputs[b] = x
        refs = {b: (x.double().reshape(b, k) @ w.double().T).reshape(b, 1, n) for b, x in inputs.items()}
        torch_err = {b: float(((x @ w.T).double() - refs[b]).norm() / refs[b].norm()) for b, x in inputs.items()}
        for case in group:
            if case["kind"] == "stock" and not case["batched"]:
                batches = (1,)
            elif not case["batched"]:
                batches = (1,)
            else:
                batches = CHECK_BATCHES
            f = lib[case["func"]]
            errs = {}
            for b in batches:
                ref = refs[b] + bias.double() if case.get("bias") else refs[b]
                y = torch.full((b, 1, n), float("nan"), dtype=torch.float16, device="cuda")
                extra = [dl(bias)] if case.get("bias") else []
                f(dl(inputs[b]), dl(w), *extra, dl(y))
                torch.cuda.synchronize()
                diff = y.double() - ref
                errs[b] = {"rel_l2": float(diff.norm() / ref.norm()), "finite": bool(torch.isfinite(y).all()),
                           "torch_fp16_rel_l2": torch_err[b]}
            ok = all(e["rel_l2"] < 2e-3 and e["finite"] for e in errs.values())
            failed += not ok
            case["ok"] = ok
            row = {"what": "check", **{key: case.get(key) for key in ("shape", "n", "k", "kind", "batched",
                                                                      "config", "default")}, "ok": ok, "errs": errs}
            out.write(json.dumps(row) + "\n")
            if not ok:
                print("FAILED", json.dumps(row), flush=True)
        del w
        torch.cuda.empty_cache()
    out.flush()
    print(f"checked in {time.perf_counter() - t0:.1f} s; failures: {failed}", flush=True)

    rows = []
    for batch in BATCHES:
        for shape, group in by_shape.items():
            if shape == "odd":
                continue
            if time.perf_counter() - t0 > budget:
                print(f"budget spent before batch {batch} {shape}", flush=True)
                break
            n, k = group[0]["n"], group[0]["k"]
            nbytes = n * k * 2
            copies = max(2, -(-256_000_000 // nbytes))
            gen.manual_seed(n + k)
            ws = [_weights(torch, n, k, gen) for _ in range(copies)]
            tw = [dl(x) for x in ws]
            xt = torch.randn((batch, 1, k), device="cuda", generator=gen).half()
            yt = torch.empty((batch, 1, n), dtype=torch.float16, device="cuda")
            x, y = dl(xt), dl(yt)
            timed = [c for c in group if c["batched"] == (batch > 1) or (batch == 1 and c["batched"])]
            launches = [(c, lambda i, f=lib[c["func"]]: f(x, tw[i % copies], y)) for c in timed]
            launches.append(({"kind": "torch", "batched": batch > 1},
                             lambda i: torch.matmul(xt, ws[i % copies].T, out=yt)))
            for case, launch in launches:
                us = gb._graph_time(torch, tvm_ffi, launch, copies, per_graph=max(copies, 20), replays=9)
                row = {"what": "time", "shape": shape, "n": n, "k": k, "batch": batch, "kind": case["kind"],
                       "batched": case["batched"], "config": case.get("config"), "default": case.get("default"),
                       "ok": case.get("ok"), "us": round(us, 2), "tb_s": round(nbytes / us / 1e6, 3),
                       "of_copy": round(nbytes / us / 1e6 / copy_tbs, 3)}
                rows.append(row)
                out.write(json.dumps(row) + "\n")
            out.flush()
            del ws, tw
            torch.cuda.empty_cache()
    print(f"\ncopy bandwidth {copy_tbs:.2f} TB/s; failures: {failed}; {time.perf_counter() - t0:.1f} s")
    print(f"{'shape':8} {'b':>3} {'path':4} {'stock us':>8} {'torch us':>8} | {'best':8} {'us':>7} {'TB/s':>5} "
          f"{'copy%':>5} {'x stock':>7} | {'default':>7}")
    for key in dict.fromkeys((r["shape"], r["batch"], r["batched"]) for r in rows):
        mine = [r for r in rows if (r["shape"], r["batch"], r["batched"]) == key]
        stock = next((r for r in mine if r["kind"] == "stock"), None)
        tor = next((r for r in mine if r["kind"] == "torch"), None)
        ember = [r for r in mine if r["kind"] == "ember" and r["ok"]]
        if not ember:
            continue
        best = min(ember, key=lambda r: r["us"])
        dflt = next((r["us"] for r in ember if r["default"]), float("nan"))
        st = f"{stock['us']:8.2f}" if stock else f"{'-':>8}"
        to = f"{tor['us']:8.2f}" if tor else f"{'-':>8}"
        ratio = stock["us"] / best["us"] if stock else float("nan")
        print(f"{key[0]:8} {key[1]:3} {'mma' if key[2] else 'gemv':4} {st} {to} | "
              f"{''.join(map(str, best['config'])):8} {best['us']:7.2f} {best['tb_s']:5.2f} "
              f"{100 * best['of_copy']:5.1f} {ratio:7.2f} | {dflt:7.2f}")
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("dir", type=Path)
    b.add_argument("--configs", choices=("sweep", "confirm", "default"), default="sweep")
    r = sub.add_parser("run")
    r.add_argument("dir", type=Path)
    r.add_argument("out", type=Path)
    r.add_argument("--budget", type=float, default=150.0, help="seconds after which timing stops")
    args = parser.parse_args()
    if args.cmd == "build":
        build(args.dir, args.configs)
        return 0
    return run(args.dir, args.out, args.budget)


if __name__ == "__main__":
    sys.exit(main())
