#!/usr/bin/env python3
"""ember's low-batch decode GEMM (targets/cuda/native_lowbatch.py) beside the stock lowering of the batched decode,
per Llama-3-8B layer shape and batch 1..64.

Here (no GPU, nvcc on PATH):
    python tools/lowbatch_bench.py build DIR
compiles, for every (scheme, shape), ember's kernel in each swept launch config and the generic lowering
(lower_quant.py scheduled by dlight's decode rules, what the batched `decode` runs today) into DIR/lowbatch.so for
sm_90, with DIR/cases.json. On the GPU (torch there; runtime-only TVM on PYTHONPATH):
    python tools/lowbatch_bench.py run DIR OUT.jsonl [--budget S]
checks every kernel against torch (the packed arrays dequantized on the GPU, fp64 matmul; outputs NaN-poisoned
first) at batch 1, 16 and 37, then times each at batch 1, 2, 4, 8, 16, 32, 64 over CUDA-graph replays that rotate
weight copies bigger than L2, beside a 2 GiB device copy measured in the same call (gemv_bench's timing).
"""
from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gemv_bench as gb  # noqa: E402  (timing, copy bandwidth, the stub driver)

SCHEMES = {  # ember scheme -> (bits, group, has_min)
    "q4f16": (4, 32, False),
    "q4f16_1": (4, 32, True),
    "q4f16g128": (4, 128, False),
    "q8f16": (8, 32, False),
}
SHAPES = gb.SHAPES
ODD = (1000, 1056)  # correctness only: rows not filling a block, a partial k-tile, a bias
# LowBatchConfig fields: (warps, n-tiles per block, batch chunks per pass, k-tiles in flight, x through cp.async)
SWEEP = [(8, 4, 1, 2, 0), (4, 4, 1, 2, 0), (4, 2, 1, 2, 1), (4, 4, 1, 2, 1), (4, 2, 2, 1, 1)]
BATCHES = (16, 1, 2, 4, 8, 32, 64)  # batch 16 first: the target, measured before any budget runs out
CHECK_BATCHES = (1, 16, 37)


def cases() -> list[dict]:
    from ember.targets.cuda import native_lowbatch as lb
    from ember.ir.ops_quant import QuantFormat

    out = []
    for scheme, (bits, group, has_min) in SCHEMES.items():
        for shape, (n, k) in SHAPES.items():
            if (shape == "lm_head") != (bits == 8) and shape != "o":
                continue
            out.append({"scheme": scheme, "shape": shape, "n": n, "k": k, "kind": "stock"})
            for cfg in SWEEP:
                out.append({"scheme": scheme, "shape": shape, "n": n, "k": k, "kind": "ember", "config": list(cfg)})
        out.append({"scheme": scheme, "shape": "odd", "n": ODD[0], "k": ODD[1], "kind": "ember", "bias": True,
                    "config": list(SWEEP[0])})
    for i, case in enumerate(out):
        if case["kind"] == "ember":
            code = lb.scheme_code(QuantFormat(*SCHEMES[case["scheme"]]), case["k"])
            default = lb.choose_config(code, case["n"], case["k"])
            case["default"] = [default.warps, default.tiles, default.chunks, default.depth,
                               default.async_x] == case["config"]
        tag = "_".join(map(str, case.get("config", [])))
        case["func"] = f"f{i:03d}_{case['scheme']}_{case['shape']}_{case['kind']}{'_' + tag if tag else ''}"
    return out


def _primfunc(case: dict):
    import tvm
    from tvm.relax.frontend import nn

    from ember.ir.ops_quant import QuantFormat
    from ember.targets.cuda import native_lowbatch as lb
    from ember.targets.cuda import pipeline
    from ember.targets.lower import LOWERINGS

    bits, group, has_min = SCHEMES[case["scheme"]]
    fmt = QuantFormat(bits, group, has_min)
    n, k = case["n"], case["k"]
    node = SimpleNamespace(op="quant_linear", attrs={"scheme": case["scheme"], **fmt.attrs(), "in_features": k})
    it = SimpleNamespace(dequant_stage=True, symbols={}, module=None)
    if case["kind"] == "ember":
        cfg = lb.LowBatchConfig(*case["config"])

        def lower(args):
            result = lb.lower_quant_linear(it, node, args, config=cfg)
            assert result is not None, case
            return result
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
    spec = {"forward": {"x": nn.spec.Tensor(["batch", 1, k], "float16"), **dict(zip(names, pieces)),
                        "$": {"param_mode": "none", "effect_mode": "none"}}}
    module = {(False, False): Two, (True, False): Three, (False, True): TwoBias, (True, True): ThreeBias}
    mod, _ = module[(has_min, bool(case.get("bias")))]().export_tvm(spec=spec)
    target = pipeline.cuda_target(["sm_90"])
    with tvm.transform.PassContext(opt_level=3, config=pipeline.PASS_CONFIG):
        mod = pipeline.cuda_relax_pipeline(target)(mod)
    funcs = [f for gv, f in mod.functions_items()
             if isinstance(f, tvm.tirx.PrimFunc) and not gv.name_hint.startswith("shape_func")]
    assert len(funcs) == 1, [gv.name_hint for gv, _ in mod.functions_items()]
    return funcs[0]


def build(out: Path) -> None:
    gb.compile_cases(out, cases(), _primfunc, "lowbatch.so")


# -- on the GPU ------------------------------------------------------------------------------------------------------
# random packed weights of a scheme and their float64 values, over this file's schemes
_packed = functools.partial(gb._packed, schemes=SCHEMES)
_dequant = functools.partial(gb._dequant, schemes=SCHEMES)


def run(root: Path, out_path: Path, budget: float) -> int:
    import torch
    from ember.runtime.tvm_import import ensure_device_runtime, import_tvm

    t0 = time.perf_counter()
    tvm = import_tvm()
    ensure_device_runtime("cuda")
    import tvm_ffi

    lib = tvm.runtime.load_module(str(root / "lowbatch.so"))
    todo = json.loads((root / "cases.json").read_text())
    copy_tbs = gb.copy_bandwidth(torch)
    out = out_path.open("w")
    header = {"device": torch.cuda.get_device_name(), "copy_tb_s": round(copy_tbs, 3)}
    out.write(json.dumps(header) + "\n")
    print(json.dumps(header), flush=True)
    gen = torch.Generator(device="cuda")
    by_shape: dict[tuple, list[dict]] = {}
    for case in todo:
        by_shape.setdefault((case["scheme"], case["shape"]), []).append(case)
    rows, failed = [], 0
    # correctness of everything first (cheap), then timing, batch 16 of every layer before the other batches
    weights_of: dict[tuple, tuple] = {}
    for (scheme, shape), group in by_shape.items():
        n, k = group[0]["n"], group[0]["k"]
        gen.manual_seed(hash((scheme, shape)) & 0xFFFF)
        first = _packed(torch, scheme, n, k, gen)
        ref_w = _dequant(torch, scheme, first, k)
        tw = [tvm.runtime.from_dlpack(p) for p in first]
        bias = torch.randn((n,), device="cuda", generator=gen).half()
        tb = tvm.runtime.from_dlpack(bias)
        for case in group:
            f = lib[case["func"]]
            errs = {}
            for b in CHECK_BATCHES:
                x = torch.randn((b, 1, k), device="cuda", generator=gen).half()
                if b == 37:
                    x[:, 0, ::997] = 6000.0  # a few massive activations
                ref = (x.double().reshape(b, k) @ ref_w.T).reshape(b, 1, n)
                extra = [tb] if case.get("bias") else []
                if extra:
                    ref = ref + bias.double()
                y = torch.full((b, 1, n), float("nan"), dtype=torch.float16, device="cuda")
                f(tvm.runtime.from_dlpack(x), *tw, *extra, tvm.runtime.from_dlpack(y))
                torch.cuda.synchronize()
                diff = y.double() - ref
                errs[b] = {"rel_l2": float(diff.norm() / ref.norm()), "finite": bool(torch.isfinite(y).all())}
            ok = all(e["rel_l2"] < 2e-3 and e["finite"] for e in errs.values())
            failed += not ok
            case["ok"], case["errs"] = ok, errs
            row = {"what": "check", "scheme": scheme, "shape": shape, "n": n, "k": k, "kind": case["kind"],
                   "config": case.get("config"), "ok": ok, "errs": errs}
            out.write(json.dumps(row) + "\n")
            if not ok:
                print("FAILED", json.dumps(row), flush=True)
        del ref_w, tw
        torch.cuda.empty_cache()
    out.flush()
    print(f"checked in {time.perf_counter() - t0:.1f} s; failures: {failed}", flush=True)

    for batch in BATCHES:
        for (scheme, shape), group in by_shape.items():
            if shape == "odd":
                continue
            if time.perf_counter() - t0 > budget:
                print(f"budget spent before batch {batch} {scheme} {shape}", flush=True)
                break
            n, k = group[0]["n"], group[0]["k"]
            gen.manual_seed(hash((scheme, shape, 1)) & 0xFFFF)
            first = _packed(torch, scheme, n, k, gen)
            nbytes = sum(p.numel() * p.element_size() for p in first)
            copies = max(2, -(-256_000_000 // nbytes))
            key = (scheme, shape)
            if key not in weights_of:
                weights_of.clear()
                torch.cuda.empty_cache()
                ws = [first] + [_packed(torch, scheme, n, k, gen) for _ in range(copies - 1)]
                weights_of[key] = ([[tvm.runtime.from_dlpack(p) for p in ps] for ps in ws], ws)
            tvm_w = weights_of[key][0]
            x = tvm.runtime.from_dlpack(torch.randn((batch, 1, k), device="cuda", generator=gen).half())
            y = tvm.runtime.from_dlpack(torch.empty((batch, 1, n), dtype=torch.float16, device="cuda"))
            for case in group:
                f = lib[case["func"]]
                us = gb._graph_time(torch, tvm_ffi, lambda i: f(x, *tvm_w[i % copies], y), copies,
                                    per_graph=max(copies, 20), replays=9)
                row = {"what": "time", "scheme": scheme, "shape": shape, "n": n, "k": k, "batch": batch,
                       "kind": case["kind"], "config": case.get("config"), "default": case.get("default", False),
                       "ok": case.get("ok"), "us": round(us, 2), "tb_s": round(nbytes / us / 1e6, 3),
                       "of_copy": round(nbytes / us / 1e6 / copy_tbs, 3), "bytes": nbytes}
                rows.append(row)
                out.write(json.dumps(row) + "\n")
            out.flush()
        weights_of.clear()
        torch.cuda.empty_cache()
    print(f"\ncopy bandwidth {copy_tbs:.2f} TB/s; failures: {failed}; {time.perf_counter() - t0:.1f} s")
    print(f"{'scheme':9} {'shape':8} {'b':>3} {'stock us':>8} | {'best':8} {'us':>7} {'TB/s':>5} {'copy%':>5} "
          f"{'x stock':>7} | {'default':>7}")
    for key in dict.fromkeys((r["scheme"], r["shape"], r["batch"]) for r in rows):
        mine = [r for r in rows if (r["scheme"], r["shape"], r["batch"]) == key]
        stock = next((r for r in mine if r["kind"] == "stock"), None)
        ember = [r for r in mine if r["kind"] == "ember" and r["ok"]]
        if not ember:
            continue
        best = min(ember, key=lambda r: r["us"])
        dflt = next((r["us"] for r in ember if r["default"]), float("nan"))
        st = f"{stock['us']:8.2f}" if stock else f"{'-':>8}"
        ratio = stock["us"] / best["us"] if stock else float("nan")
        print(f"{key[0]:9} {key[1]:8} {key[2]:3} {st} | {''.join(map(str, best['config'])):8} {best['us']:7.2f} "
              f"{best['tb_s']:5.2f} {100 * best['of_copy']:5.1f} {ratio:7.2f} | {dflt:7.2f}")
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("dir", type=Path)
    r = sub.add_parser("run")
    r.add_argument("dir", type=Path)
    r.add_argument("out", type=Path)
    r.add_argument("--budget", type=float, default=110.0, help="seconds after which timing stops")
    args = parser.parse_args()
    if args.cmd == "build":
        build(args.dir)
        return 0
    return run(args.dir, args.out, args.budget)


if __name__ == "__main__":
    sys.exit(main())
