#!/usr/bin/env python3
"""The cuda MoE block alone (targets/cuda/native_moe.py -> kernels/moe.cuh) against float64 numpy, at 1 to 200 tokens
a call: does a plan give every token its own right answer, whatever the token count?

Model-level checks (tools/gemv_parity.py) compare whole networks, where fp16 activations and routing decide the
error; here the inputs are the same fp16 x and router logits for the kernel and the reference, the routing gaps are
wide (no near-ties), and the experts are GGUF blocks dequantized by gguf (or ember's own schemes by
passes.quant_schemes.dequantize), so a token-count-dependent fault shows as one token's error, not as noise.

Here (no GPU, nvcc on PATH):
    PYTHONPATH=. python tools/moe_kernel_check.py build DIR
compiles one library per case (build_cuda, PDL as artifacts have it: the kgemv plan for kgemv.cuh's GGUF formats,
the per-weight plan for Q2_K / Q3_K and mixed experts, the grouped and per-slot plans of q4f16_1 as controls),
symbolic token count (DIR/<case>.so, a VM module), and writes each case's packed experts, inputs and float64 reference outputs (DIR/<case>.npz) with DIR/cases.json.
On the GPU (torch there; runtime-only TVM on PYTHONPATH):
    python tools/moe_kernel_check.py check DIR OUT.jsonl
one JSON line per (case, token count): max |y - ref| over max |ref|, the worst token, whether y is finite; exit 1
when any is over TOLERANCE.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

EXPERTS, HIDDEN, INTER, TOP_K = 8, 256, 512, 2
TOKENS = (1, 2, 3, 17, 64, 200)
TOLERANCE = 4e-3  # of max |ref|: fp16 output rounding (2^-11) and fp32 accumulation, with margin
CASES = {  # name -> (gate, up, down GGUF types or an ember scheme, plan switch)
    "q4_k+q6_k": (("Q4_K", "Q4_K", "Q6_K"), {}),
    "q5_k": (("Q5_K", "Q5_K", "Q5_K"), {}),
    "q5_0+q5_1+q6_k": (("Q5_0", "Q5_1", "Q6_K"), {}),
    "q2_k+q3_k+q5_0": (("Q2_K", "Q3_K", "Q5_0"), {}),
    "q5_1+q8_0+q6_k": (("Q5_1", "Q8_0", "Q6_K"), {}),
    "q4f16_1-grouped": (("q4f16_1",) * 3, {}),
    "q4f16_1-slots": (("q4f16_1",) * 3, {"EMBER_CUDA_MOE": "slots"}),
}


def _weights(types: tuple[str, str, str], rng: np.random.Generator):
    """[(QuantFormat, scheme name, stacked pieces, float64 [E, N, K] values)] of gate, up, down."""
    import gguf

    from ember.passes.quant_schemes import GGML_TO_SCHEME, SCHEMES, dequantize, from_ggml_blocks, quantize
    from tests.quant.model_fixtures import KQUANT_HALVES, random_kquant_blocks

    out = []
    for i, (kind, (rows, cols)) in enumerate(zip(types, ((INTER, HIDDEN), (INTER, HIDDEN), (HIDDEN, INTER)))):
        if kind in SCHEMES:  # one of ember's own schemes, quantized here
            fmt = SCHEMES[kind].format
            w = rng.normal(0, 0.04, (EXPERTS * rows, cols)).astype(np.float32)
            packed = quantize(w, fmt)
            values = dequantize(packed, fmt, cols).astype(np.float64)
            name = kind
        else:
            qtype = gguf.GGMLQuantizationType[kind]
            if qtype in KQUANT_HALVES:  # gguf cannot quantize these: random super blocks
                raw = random_kquant_blocks((EXPERTS * rows, cols), qtype, seed=31 * i + len(kind))
            else:
                raw = gguf.quants.quantize(rng.normal(0, 0.04, (EXPERTS * rows, cols)).astype(np.float32), qtype)
            values = gguf.quants.dequantize(raw, qtype).astype(np.float64)
            name = GGML_TO_SCHEME[kind]
            fmt = SCHEMES[name].format
            packed = from_ggml_blocks(raw, kind, cols)
        pieces = [np.ascontiguousarray(a.reshape(EXPERTS, rows, *a.shape[1:])) for a in packed.pieces()]
        out.append((fmt, name, pieces, values.reshape(EXPERTS, rows, cols)))
    return out


def reference(x: np.ndarray, logits: np.ndarray, gate, up, down, k: int) -> np.ndarray:
    """softmax top-k routing (renormalized) and SwiGLU experts in float64."""
    y = np.zeros((x.shape[0], down.shape[1]))
    for t in range(x.shape[0]):
        p = np.exp(logits[t] - logits[t].max())
        p /= p.sum()
        top = np.argsort(-p, kind="stable")[:k]
        for e in top:
            g = gate[e] @ x[t]
            y[t] += p[e] / p[top].sum() * (down[e] @ (g / (1 + np.exp(-g)) * (up[e] @ x[t])))
    return y


def _inputs(tokens: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """fp16 x and router logits whose sorted values are at least 0.5 apart (no routing near-ties)."""
    x = rng.normal(size=(tokens, HIDDEN)).astype(np.float16)
    logits = np.stack([rng.permutation(EXPERTS) * 0.6 + rng.uniform(-0.05, 0.05, EXPERTS)
                       for _ in range(tokens)]).astype(np.float16)
    return x, logits


def _primfunc(name: str, weights: list, env: dict):
    import kgemv_bench

    from ember.ir.ops_moe import MOE_WEIGHTS, WEIGHT_FORMATS
    from ember.targets.cuda import native_moe

    schemes = [s for _, s, _, _ in weights]
    first = weights[0][0]
    attrs = {"scheme": "+".join(dict.fromkeys(schemes)), **first.attrs(), "hidden": HIDDEN, "intermediate": INTER,
             "top_k": TOP_K, "norm_topk_prob": True}
    if len(set(schemes)) > 1:
        attrs[WEIGHT_FORMATS] = {w: {"scheme": s, **f.attrs()} for w, (f, s, _, _) in zip(MOE_WEIGHTS, weights)}
    node = SimpleNamespace(op="quant_moe", attrs=attrs)
    inputs = [("x", ["tokens", HIDDEN], "float16"), ("logits", ["tokens", EXPERTS], "float16")]
    for w, (_, _, pieces, _) in zip(("g", "u", "d"), weights):
        inputs += [(f"{w}{i}", list(p.shape), str(p.dtype)) for i, p in enumerate(pieces)]

    def lower(args):
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            result = native_moe.lower(None, node, list(args))
        finally:
            for k, v in saved.items():
                os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
        assert result is not None, name
        return result

    return kgemv_bench.relax_module(lower, inputs)


def build(out: Path) -> None:
    import gemv_bench as gb

    gb._prepare()
    from ember.targets.cuda.pipeline import build_cuda

    out.mkdir(parents=True, exist_ok=True)
    todo = []
    for index, (name, (types, env)) in enumerate(CASES.items()):
        rng = np.random.default_rng(index)
        weights = _weights(types, rng)
        func_name = "moe_" + name.replace("+", "_").replace("-", "_")
        mod = _primfunc(name, weights, env)
        calls = sorted({c.split("<")[0] for c in mod.script().split('"') if c.startswith("ember::moe::")})
        build_cuda(mod, ["sm_90"]).export_library(str(out / f"{func_name}.so"))
        inputs = {t: _inputs(t, rng) for t in TOKENS}
        arrays = {f"w{j}_{i}": p for j, w in enumerate(weights) for i, p in enumerate(w[2])}
        for t, (x, lg) in inputs.items():
            arrays[f"x_{t}"], arrays[f"logits_{t}"] = x, lg
            arrays[f"ref_{t}"] = reference(x.astype(np.float64), lg.astype(np.float64), *(w[3] for w in weights),
                                           TOP_K)
        np.savez(out / f"{func_name}.npz", **arrays)
        todo.append({"case": name, "func": func_name, "types": list(types), "env": env,
                     "pieces": [len(w[2]) for w in weights], "kernels": calls})
        print(f"{name}: {', '.join(calls)}", flush=True)
    (out / "cases.json").write_text(json.dumps(todo, indent=1))
    print(f"wrote {out}", flush=True)


def check(root: Path, out_path: Path) -> int:
    import torch

    from ember.runtime.tvm_import import ensure_device_runtime, import_tvm

    tvm = import_tvm()
    ensure_device_runtime("cuda")
    from tvm.runtime.vm import VirtualMachine


    def device_tensor(a: np.ndarray):
        if a.dtype == np.uint32:
            return torch.from_numpy(a.view(np.int32)).cuda().view(torch.uint32)
        return torch.from_numpy(a).cuda()

    failed = 0
    with out_path.open("w") as out:
        out.write(json.dumps({"what": "header", "device": torch.cuda.get_device_name()}) + "\n")
        for case in json.loads((root / "cases.json").read_text()):
            data = np.load(root / f"{case['func']}.npz")
            weights = [device_tensor(data[f"w{j}_{i}"]) for j, n in enumerate(case["pieces"]) for i in range(n)]
            f = VirtualMachine(tvm.runtime.load_module(str(root / f"{case['func']}.so")), tvm.cuda())["forward"]
            for t in TOKENS:
                x, lg = device_tensor(data[f"x_{t}"]), device_tensor(data[f"logits_{t}"])
                result = f(*(tvm.runtime.from_dlpack(a) for a in (x, lg, *weights)))
                y = torch.from_dlpack(result).double().cpu().numpy()
                ref = data[f"ref_{t}"]
                per_token = np.abs(y - ref).max(axis=1) / np.abs(ref).max()
                worst = int(np.nanargmax(per_token)) if np.isfinite(per_token).any() else 0
                err = float(per_token.max())
                ok = bool(np.isfinite(y).all() and err <= TOLERANCE)
                failed += not ok
                row = {"what": "check", "case": case["case"], "tokens": t, "ok": ok, "max_err_of_scale": err,
                       "worst_token": worst, "tokens_over": int((~(per_token <= TOLERANCE)).sum()),
                       "finite": bool(np.isfinite(y).all()), "kernels": case["kernels"]}
                out.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)
    print(f"failures: {failed}", flush=True)
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("build").add_argument("dir", type=Path)
    c = sub.add_parser("check")
    c.add_argument("dir", type=Path)
    c.add_argument("out", type=Path)
    args = parser.parse_args()
    if args.cmd == "build":
        build(args.dir)
        return 0
    return check(args.dir, args.out)


if __name__ == "__main__":
    sys.exit(main())
