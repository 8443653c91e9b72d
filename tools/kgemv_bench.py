#!/usr/bin/env python3
"""ember's GEMV / low-batch GEMM for the GGUF formats kept native (kernels/kgemv.cuh, klowbatch.cuh) per
Llama-3-8B Q4_K_M layer shape, beside ember's q4f16 kernels of the same shape and a device-copy roofline.

Here (no GPU, nvcc on PATH):
    python tools/kgemv_bench.py build DIR [--quick]      (after a run: python tools/kgemv_bench.py pick OUT.jsonl)
compiles every (format, shape) in each swept launch config (batch 1: kgemv, batched: klowbatch), dlight's
batched lowering for two q4_k shapes, and ember's q4f16 GEMV / low-batch GEMM (their default configs) into
DIR/kgemv.so for sm_90, with DIR/cases.json. On the GPU (torch there; runtime-only TVM on PYTHONPATH):
    python tools/kgemv_bench.py run DIR OUT.jsonl [--budget S]
checks every kernel against torch (the packed arrays dequantized on the GPU by `torch_dequant`, which the tests
check against gguf.quants.dequantize; fp64 matmul; outputs NaN-poisoned first), then times each over CUDA-graph
replays that rotate weight copies bigger than L2 (gemv_bench's timing) beside a 2 GiB device copy, batch 1 first,
then batch 16 and the other batches while the budget lasts. One JSON line per check and per timing; tables last.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gemv_bench as gb  # noqa: E402  (timing, copy bandwidth, compile_cases, q4f16 data)

# Llama-3-8B as a Q4_K_M file has it: q/k Q4_K beside a Q6_K v do not fuse (q and o share a shape)
SHAPES = {"q_o": (4096, 4096), "kv": (1024, 4096), "gate_up": (28672, 4096), "down": (4096, 14336),
          "lm_head": (128256, 4096)}
PLAN = {  # format -> (shapes, full sweep?)
    "q4_k": (("q_o", "kv", "gate_up", "down"), True),
    "q6_k": (("kv", "down", "lm_head", "q_o"), True),
    "q5_k": (("q_o", "gate_up", "down"), False),
    "q5f16": (("q_o", "gate_up"), False),
    "q5f16_1": (("q_o", "gate_up"), False),
}
# KGemvConfig: (warps, rows per warp, steps in flight)
SWEEP = [(4, 2, 4), (4, 1, 4), (4, 4, 4), (8, 2, 4), (4, 2, 2), (4, 2, 8), (8, 1, 8), (2, 2, 4), (8, 4, 2),
         (4, 1, 8)]
# KLowBatchConfig: (warps, n-tiles per block, batch chunks per pass, k-tiles in flight)
LB_SWEEP = [(8, 4, 1, 2), (4, 4, 1, 2), (4, 2, 1, 2), (8, 2, 1, 2), (8, 4, 1, 1), (4, 4, 2, 1)]
ODD = (1000, 1280)  # correctness only: rows not filling a block, K/32 = 40 (a partial step), a bias
ODD_K = {"q5f16": 1056, "q5f16_1": 1056}  # no super blocks: K/32 = 33, a partial k-tile too
BATCHES = (16, 4, 32, 2, 8)  # after batch 1; 16 first (the target)
CHECK_BATCHES = (1, 16, 37)
Q4_BASE = {"gemv": [4, 2, 4, 2, 0], "gemv_long": [8, 2, 4, 2, 0], "lowbatch": [8, 4, 1, 2, 0]}  # their defaults


def _fmt(name: str):
    from ember.passes.quant_schemes import SCHEMES

    return SCHEMES[name].format


def cases(quick: bool = False) -> list[dict]:
    from ember.targets.cuda import native_kgemv as kg
    from ember.targets.cuda import native_klowbatch as klb

    out: list[dict] = []
    for name, (shapes, full) in PLAN.items():
        sweep = SWEEP if full and not quick else SWEEP[:2]
        lb_sweep = LB_SWEEP if full and not quick else LB_SWEEP[:2]
        for shape in shapes:
            n, k = SHAPES[shape]
            base = {"format": name, "shape": shape, "n": n, "k": k}
            out += [{**base, "kind": "kgemv", "config": list(c)} for c in sweep]
            out += [{**base, "kind": "klowbatch", "config": list(c)} for c in lb_sweep]
            if shape == "down":  # what a decode step runs there: x = silu(gate) * up staged by the kernel
                out.append({**base, "kind": "kgemv", "act": 1, "config": list(sweep[0])})
            if name == "q4_k" and shape in ("q_o", "gate_up"):
                out.append({**base, "kind": "stock_batched"})
        odd = {"format": name, "shape": "odd", "n": ODD[0], "k": ODD_K.get(name, ODD[1])}
        out += [{**odd, "kind": "kgemv", "config": list(c)} for c in SWEEP[:2]]
        out += [{**odd, "kind": "kgemv", "bias": True, "config": list(SWEEP[2])},
                {**odd, "kind": "kgemv", "act": 1, "config": list(SWEEP[3])},
                {**odd, "kind": "klowbatch", "bias": True, "config": list(LB_SWEEP[0])},
                {**odd, "kind": "klowbatch", "config": list(LB_SWEEP[5])}]
    for shape, (n, k) in SHAPES.items():  # ember's q4f16 kernels, same shapes
        base = {"format": "q4f16", "shape": shape, "n": n, "k": k}
        out.append({**base, "kind": "gemv", "config": Q4_BASE["gemv_long" if k > 8192 else "gemv"]})
        out.append({**base, "kind": "lowbatch", "config": Q4_BASE["lowbatch"]})
    for i, case in enumerate(out):
        if case["kind"] in ("kgemv", "klowbatch"):
            code = kg.format_code(_fmt(case["format"]), case["k"])
            default = (kg.choose_config if case["kind"] == "kgemv" else klb.choose_config)(code, case["n"], case["k"])
            case["default"] = list(default.__dict__.values()) == case["config"]
        tag = "_".join(map(str, case.get("config", [])))
        extra = ("_bias" if case.get("bias") else "") + ("_swiglu" if case.get("act") else "")
        case["func"] = f"f{i:03d}_{case['format']}_{case['shape']}_{case['kind']}{'_' + tag if tag else ''}{extra}"
    return out


def relax_module(lower, inputs: list[tuple[str, list, str]]):
    """The Relax module of forward(*inputs) = lower(inputs) (inputs: name, shape, dtype)."""
    from tvm.relax.frontend import nn

    names = [n for n, _, _ in inputs]
    scope: dict = {}
    exec(f"def forward(self, {', '.join(names)}):\n    return lower([{', '.join(names)}])", {"lower": lower}, scope)
    module = type("One", (nn.Module,), {"forward": scope["forward"]})
    spec = {"forward": {**{n: nn.spec.Tensor(s, d) for n, s, d in inputs},
                        "$": {"param_mode": "none", "effect_mode": "none"}}}
    mod, _ = module().export_tvm(spec=spec)
    return mod


def _export(lower, inputs: list[tuple[str, list, str]]):
    """The one PrimFunc of forward(*inputs) = lower(inputs), through ember's cuda relax pipeline for sm_90."""
    import tvm

    from ember.targets.cuda import pipeline

    mod = relax_module(lower, inputs)
    target = pipeline.cuda_target(["sm_90"])
    with tvm.transform.PassContext(opt_level=3, config=pipeline.PASS_CONFIG):
        mod = pipeline.cuda_relax_pipeline(target)(mod)
    funcs = [f for gv, f in mod.functions_items()
             if isinstance(f, tvm.tirx.PrimFunc) and not gv.name_hint.startswith("shape_func")]
    assert len(funcs) == 1, [gv.name_hint for gv, _ in mod.functions_items()]
    return funcs[0]


def _primfunc(case: dict):
    from tvm.relax.frontend.nn import op

    from ember.targets.cuda import native_kgemv as kg
    from ember.targets.cuda import native_klowbatch as klb
    from ember.targets.cuda.extern_kernel import ATTRS
    from ember.targets.lower import LOWERINGS

    if case["kind"] == "gemv":
        return gb._primfunc({**case, "scheme": "q4f16", "kind": "ember"})
    if case["kind"] == "lowbatch":
        import lowbatch_bench as lbb

        return lbb._primfunc({**case, "scheme": "q4f16", "kind": "ember"})
    fmt = _fmt(case["format"])
    n, k = case["n"], case["k"]
    node = SimpleNamespace(op="quant_linear", attrs={"scheme": case["format"], **fmt.attrs(), "in_features": k})
    it = SimpleNamespace(dequant_stage=True, symbols={}, module=None)
    lead = [1, 1] if case["kind"] == "kgemv" else ["batch", 1]
    width = 2 * k if case.get("act") else k
    inputs = [("x", lead + [width], "float16")]
    inputs += [(f"p{i}", list(t.shape), t.dtype) for i, t in enumerate(fmt.piece_types(n, k))]
    inputs += [("b", [n], "float16")] if case.get("bias") else []

    def lower(args):
        if case["kind"] == "kgemv" and case.get("act"):
            code = kg.format_code(fmt, k)
            compute = kg.kgemv_compute(fmt, code, n, k, 1 if case.get("bias") else 0, kg.KGemvConfig(*case["config"]),
                                       act=kg.SWIGLU)
            return op.tensor_expr_op(compute, "kgemv_swiglu", list(args), attrs=ATTRS)
        if case["kind"] == "kgemv":
            result = kg.lower_quant_linear(it, node, args, config=kg.KGemvConfig(*case["config"]))
        elif case["kind"] == "klowbatch":
            result = klb.lower_quant_linear(it, node, args, config=klb.KLowBatchConfig(*case["config"]))
        else:
            result = LOWERINGS["quant_linear"](it, node, args)
        assert result is not None, case
        return result

    return _export(lower, inputs)


def build(out: Path, quick: bool) -> None:
    gb._prepare()  # before cases() imports tvm: a tvm without its CUDA runtime would embed the kernels as source
    gb.compile_cases(out, cases(quick), _primfunc, "kgemv.so")


# -- the packed pieces and their values (torch, any device) ----------------------------------------------------------
def _u32(torch, t):
    """uint32 tensor -> int64 of the same bits."""
    return t.view(torch.int32).to(torch.int64) & 0xFFFFFFFF


def torch_dequant(torch, fmt, pieces: list, k: int):
    """float64 [N, K] values of packed pieces (in fmt.piece_names order), by ir/ops_quant.py's formulas."""
    named = dict(zip(fmt.piece_names, pieces))
    dev = named["qweight"].device
    words = _u32(torch, named["qweight"])
    rows = words.shape[0]
    q = ((words[:, :, None] >> torch.arange(0, 32, 4, device=dev)) & 15).reshape(rows, -1)[:, :k]
    if fmt.bits == 5:
        high = (_u32(torch, named["qhigh"])[:, :, None] >> torch.arange(32, device=dev)) & 1
        q = q | (high.reshape(rows, -1)[:, :k] << 4)
    elif fmt.bits == 6:
        high = (_u32(torch, named["qhigh"])[:, :, None] >> torch.arange(0, 32, 2, device=dev)) & 3
        q = q | (high.reshape(rows, -1)[:, :k] << 4)
    q = q.double()
    group = torch.arange(k, device=dev) // fmt.group_size
    if not fmt.super_block:
        s = named["scales"].double()[:, group]
        return s * q + named["mins"].double()[:, group] if fmt.has_min else s * (q - 2 ** (fmt.bits - 1))
    sup = torch.arange(k, device=dev) // fmt.super_block
    s = named["super"].double()[:, sup] * named["scales"].double()[:, group]
    if fmt.has_min:
        return s * q - named["super_mins"].double()[:, sup] * named["mins"].double()[:, group]
    return s * (q - 32)


def random_pieces(torch, fmt, n: int, k: int, gen, device: str = "cuda") -> list:
    """Random packed pieces: full-range codes and high bits; K-quants 6-bit scale / min codes (Q6_K: int8) with small
    fp16 d / dmin; Q5_0/Q5_1 signed fp16 scales (mins near -16 s, as Q5_1 has them)."""
    def words(shape):
        return torch.randint(-2 ** 31, 2 ** 31, shape, dtype=torch.int64, device=device,
                             generator=gen).to(torch.int32).view(torch.uint32)

    def uniform(shape, lo, hi):
        return torch.rand(shape, device=device, generator=gen) * (hi - lo) + lo

    out = {"qweight": words((n, k // 8))}
    if fmt.bits == 5:
        out["qhigh"] = words((n, k // 32))
    elif fmt.bits == 6:
        out["qhigh"] = words((n, k // 16))
    groups = k // fmt.group_size
    if fmt.super_block:
        supers = k // fmt.super_block
        if fmt.has_min:
            out["scales"] = torch.randint(0, 64, (n, groups), dtype=torch.uint8, device=device, generator=gen)
            out["mins"] = torch.randint(0, 64, (n, groups), dtype=torch.uint8, device=device, generator=gen)
            out["super_mins"] = uniform((n, supers), 2e-5, 2e-4).half()
        else:
            out["scales"] = torch.randint(-128, 128, (n, groups), dtype=torch.int8, device=device, generator=gen)
        out["super"] = uniform((n, supers), 5e-5, 3e-4).half()
    else:
        sign = torch.where(torch.rand((n, groups), device=device, generator=gen) < 0.5, -1.0, 1.0)
        s = uniform((n, groups), 0.002, 0.006)
        out["scales"] = (s * (1.0 if fmt.has_min else sign)).half()
        if fmt.has_min:
            out["mins"] = (-s * uniform((n, groups), 12, 20)).half()
    return [out[name] for name in fmt.piece_names]


# -- on the GPU ------------------------------------------------------------------------------------------------------
def _pieces(torch, case: dict, gen) -> list:
    """Random packed pieces of a case's format and shape, on the GPU."""
    if case["format"] == "q4f16":
        return gb._packed(torch, "q4f16", case["n"], case["k"], gen)
    return random_pieces(torch, _fmt(case["format"]), case["n"], case["k"], gen)


def _data(torch, case: dict, gen):
    """(pieces, their float64 values)."""
    pieces = _pieces(torch, case, gen)
    if case["format"] == "q4f16":
        return pieces, gb._dequant(torch, "q4f16", pieces, case["k"])
    return pieces, torch_dequant(torch, _fmt(case["format"]), pieces, case["k"])


def _inputs(torch, case: dict, batch: int, gen, spikes: bool):
    """(kernel input, the x it stands for (fp16)) for a batch; SwiGLU cases take [gate | up]."""
    k = case["k"]
    if case.get("act"):
        gu = torch.randn((batch, 1, 2 * k), device="cuda", generator=gen).half()
        g, u = gu[..., :k].float(), gu[..., k:].float()
        return gu, (g * torch.sigmoid(g) * u).half()
    x = torch.randn((batch, 1, k), device="cuda", generator=gen).half()
    if spikes:
        x[..., ::997] = 6000.0  # a few massive activations (as in some Llama layers)
    return x, x


def _check(torch, tvm, f, case: dict, tw: list, ref_w, bias, gen) -> dict:
    batches = (1,) if case["kind"] in ("kgemv", "gemv") else CHECK_BATCHES
    errs = {}
    for b in batches:
        for label, spikes in (("x1", False), ("spikes", True)):
            if case.get("act") and spikes:
                continue
            xin, x = _inputs(torch, case, b, gen, spikes)
            ref = (x.double().reshape(b, -1) @ ref_w.T).reshape(b, 1, -1)
            extra = [tvm.runtime.from_dlpack(bias)] if case.get("bias") else []
            if extra:
                ref = ref + bias.double()
            y = torch.full((b, 1, case["n"]), float("nan"), dtype=torch.float16, device="cuda")
            f(tvm.runtime.from_dlpack(xin), *tw, *extra, tvm.runtime.from_dlpack(y))
            torch.cuda.synchronize()
            diff = y.double() - ref
            errs[f"b{b}_{label}"] = {"rel_l2": float(diff.norm() / ref.norm()),
                                     "max_abs_rel": float(diff.abs().max() / ref.abs().max()),
                                     "finite": bool(torch.isfinite(y).all())}
    return errs


def run(root: Path, out_path: Path, budget: float) -> int:
    import torch
    from ember.runtime.tvm_import import ensure_device_runtime, import_tvm

    t0 = time.perf_counter()
    tvm = import_tvm()
    ensure_device_runtime("cuda")
    import tvm_ffi

    lib = tvm.runtime.load_module(str(root / "kgemv.so"))
    todo = json.loads((root / "cases.json").read_text())
    copy_tbs = gb.copy_bandwidth(torch)
    out = out_path.open("w")

    def emit(row: dict) -> None:
        out.write(json.dumps(row) + "\n")
        out.flush()

    header = {"what": "header", "device": torch.cuda.get_device_name(), "copy_tb_s": round(copy_tbs, 3)}
    emit(header)
    print(json.dumps(header), flush=True)
    gen = torch.Generator(device="cuda")
    by_shape: dict[tuple, list[dict]] = {}
    for case in todo:
        by_shape.setdefault((case["format"], case["shape"]), []).append(case)
    failed = 0
    for (name, shape), group in by_shape.items():  # correctness first (cheap)
        gen.manual_seed(hash((name, shape)) & 0xFFFF)
        pieces, ref_w = _data(torch, group[0], gen)
        tw = [tvm.runtime.from_dlpack(p) for p in pieces]
        bias = torch.randn((group[0]["n"],), device="cuda", generator=gen).half()
        for case in group:
            errs = _check(torch, tvm, lib[case["func"]], case, tw, ref_w, bias, gen)
            ok = all(e["rel_l2"] < 2e-3 and e["finite"] for e in errs.values())
            failed += not ok
            case["ok"] = ok
            row = {"what": "check", **{k: case.get(k) for k in ("format", "shape", "kind", "config", "act")},
                   "ok": ok, "errs": errs}
            emit(row)
            if not ok:
                print("FAILED", json.dumps(row), flush=True)
        del ref_w, tw, pieces
        torch.cuda.empty_cache()
    print(f"checked in {time.perf_counter() - t0:.1f} s; failures: {failed}", flush=True)

    rows: list[dict] = []
    for batch in (1,) + BATCHES:
        for (name, shape), group in by_shape.items():
            mine = [c for c in group if (c["kind"] in ("kgemv", "gemv")) == (batch == 1)]
            if shape == "odd" or not mine:
                continue
            if time.perf_counter() - t0 > budget:
                print(f"budget spent before batch {batch} {name} {shape}", flush=True)
                break
            n, k = mine[0]["n"], mine[0]["k"]
            gen.manual_seed(hash((name, shape, 1)) & 0xFFFF)
            first = _pieces(torch, mine[0], gen)
            nbytes = sum(p.numel() * p.element_size() for p in first)
            copies = max(2, -(-256_000_000 // nbytes))
            ws = [first] + [_pieces(torch, mine[0], gen) for _ in range(copies - 1)]
            tvm_w = [[tvm.runtime.from_dlpack(p) for p in ps] for ps in ws]
            y = tvm.runtime.from_dlpack(torch.empty((batch, 1, n), dtype=torch.float16, device="cuda"))
            for case in mine:
                f = lib[case["func"]]
                x = tvm.runtime.from_dlpack(_inputs(torch, case, batch, gen, False)[0])
                us = gb._graph_time(torch, tvm_ffi, lambda i: f(x, *tvm_w[i % copies], y), copies,
                                    per_graph=max(copies, 40 if batch == 1 else 20), replays=15 if batch == 1 else 9)
                row = {"what": "time", "format": name, "shape": shape, "n": n, "k": k, "batch": batch,
                       "kind": case["kind"], "config": case.get("config"), "act": case.get("act", 0),
                       "default": case.get("default", False), "ok": case.get("ok"), "us": round(us, 2),
                       "tb_s": round(nbytes / us / 1e6, 3), "of_copy": round(nbytes / us / 1e6 / copy_tbs, 3),
                       "bytes": nbytes}
                rows.append(row)
                emit(row)
            del ws, tvm_w, first
            torch.cuda.empty_cache()
    summary(rows, copy_tbs, failed, time.perf_counter() - t0, emit)
    return 1 if failed else 0


# Llama-3-8B Q4_K_M per token: 32 x (q, o, k: Q4_K; v: Q6_K; gate_up: Q4_K), down Q6_K in 16 layers (llama.cpp's
# use_more_bits) and Q4_K in 16, the Q6_K LM head
STEP = [("q4_k", "q_o", 64), ("q4_k", "kv", 32), ("q6_k", "kv", 32), ("q4_k", "gate_up", 32), ("q4_k", "down", 16),
        ("q6_k", "down", 16), ("q6_k", "lm_head", 1)]

def pick(path: Path) -> None:
    """From a run's JSON lines: per kernel and batch, the one config with the least Q4_K_M step time over the layers
    of K <= 8192 and of K > 8192 (what choose_config tells apart), beside the per-layer best; the other formats'
    best configs per shape."""
    rows = [r for r in map(json.loads, path.read_text().splitlines()) if r.get("what") == "time" and r.get("ok")
            and not r.get("act") and r["kind"] in ("kgemv", "klowbatch")]
    for kind, batch in (("kgemv", 1), ("klowbatch", 16), ("klowbatch", 4), ("klowbatch", 32)):
        mine = [r for r in rows if r["kind"] == kind and r["batch"] == batch]
        if not mine:
            continue
        for long_rows in (False, True):
            layers = [(f, s, c) for f, s, c in STEP if (SHAPES[s][1] > 8192) == long_rows]
            totals: dict[tuple, float] = {}
            for cfg in {tuple(r["config"]) for r in mine}:
                times = [next((r["us"] for r in mine if (r["format"], r["shape"], tuple(r["config"])) == (f, s, cfg)),
                              None) for f, s, _ in layers]
                if all(t is not None for t in times):
                    totals[cfg] = sum(t * c for t, (_, _, c) in zip(times, layers))
            if not totals:
                continue
            best = min(totals, key=totals.get)
            per_layer = sum(min((r["us"] for r in mine if (r["format"], r["shape"]) == (f, s)), default=0.0) * c
                            for f, s, c in layers)
            print(f"{kind} b{batch} {'K > 8192' if long_rows else 'K <= 8192'}: config {list(best)} "
                  f"{totals[best]:.1f} us per token (each layer's best: {per_layer:.1f}); runners-up "
                  + ", ".join(f"{list(c)} {totals[c]:.1f}" for c in sorted(totals, key=totals.get)[1:4]))
        for fmt in dict.fromkeys(r["format"] for r in mine):
            for shape in dict.fromkeys(r["shape"] for r in mine if r["format"] == fmt):
                here = [r for r in mine if (r["format"], r["shape"]) == (fmt, shape)]
                b = min(here, key=lambda r: r["us"])
                d = next((r["us"] for r in here if r["default"]), float("nan"))
                print(f"  {fmt:8} {shape:8} best {b['config']} {b['us']:.2f} us ({100 * b['of_copy']:.0f}% of copy), "
                      f"default {d:.2f}")


def summary(rows: list[dict], copy_tbs: float, failed: int, seconds: float, emit) -> None:
    """Per (format, shape, batch): the best checked config beside the default and ember's q4f16 kernel; then a
    Q4_K_M decode step's GEMV time at batch 1 from the best and from the default configs."""
    print(f"\ncopy bandwidth {copy_tbs:.2f} TB/s; failures: {failed}; {seconds:.1f} s")
    print(f"{'format':8} {'shape':8} {'b':>3} | {'best':9} {'us':>7} {'TB/s':>5} {'copy%':>5} | {'default':>7} | "
          f"{'q4f16 us':>8} {'TB/s':>5} | {'stock':>7}")
    best_of: dict[tuple, dict] = {}
    for key in dict.fromkeys((r["format"], r["shape"], r["batch"]) for r in rows if r["format"] != "q4f16"):
        mine = [r for r in rows if (r["format"], r["shape"], r["batch"]) == key]
        ours = [r for r in mine if r["kind"] in ("kgemv", "klowbatch") and r["ok"] and not r["act"]]
        if not ours:
            continue
        best = min(ours, key=lambda r: r["us"])
        dflt = next((r for r in ours if r["default"]), None)
        base = next((r for r in rows if r["format"] == "q4f16" and (r["shape"], r["batch"]) == key[1:]), None)
        stock = next((r for r in mine if r["kind"] == "stock_batched"), None)
        best_of[key] = {"best": best, "default": dflt}
        emit({"what": "best", "format": key[0], "shape": key[1], "batch": key[2], "config": best["config"],
              "us": best["us"], "tb_s": best["tb_s"], "of_copy": best["of_copy"],
              "default_us": dflt["us"] if dflt else None, "q4f16_us": base["us"] if base else None,
              "q4f16_tb_s": base["tb_s"] if base else None, "stock_us": stock["us"] if stock else None})
        cfg = "".join(map(str, best["config"]))
        print(f"{key[0]:8} {key[1]:8} {key[2]:3} | {cfg:9} {best['us']:7.2f} {best['tb_s']:5.2f} "
              f"{100 * best['of_copy']:5.1f} | {dflt['us'] if dflt else float('nan'):7.2f} | "
              f"{base['us'] if base else float('nan'):8.2f} {base['tb_s'] if base else float('nan'):5.2f} | "
              f"{stock['us'] if stock else float('nan'):7.2f}")
    for which in ("best", "default"):
        picked = [best_of.get((f, s, 1), {}).get(which) for f, s, _ in STEP]
        if all(picked):
            us = sum(r["us"] * count for r, (_, _, count) in zip(picked, STEP))
            emit({"what": "q4_k_m_step", "configs": which, "gemv_us": round(us, 1)})
            print(f"Q4_K_M llama3-8b GEMVs per token ({which} configs): {us / 1e3:.3f} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("dir", type=Path)
    b.add_argument("--quick", action="store_true", help="two configs per kernel and shape")
    r = sub.add_parser("run")
    r.add_argument("dir", type=Path)
    r.add_argument("out", type=Path)
    r.add_argument("--budget", type=float, default=150.0, help="seconds after which timing stops")
    p = sub.add_parser("pick", help="the launch configs a run's timings suggest for choose_config")
    p.add_argument("out", type=Path)
    args = parser.parse_args()
    if args.cmd == "build":
        build(args.dir, args.quick)
        return 0
    if args.cmd == "pick":
        pick(args.out)
        return 0
    return run(args.dir, args.out, args.budget)


if __name__ == "__main__":
    sys.exit(main())
