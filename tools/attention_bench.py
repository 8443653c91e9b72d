#!/usr/bin/env python3
"""ember's split-K decode attention (targets/cuda/attention.py) beside TVM's `batch_decode_paged_kv`.

Here (no GPU, nvcc on PATH):
    python tools/attention_bench.py build DIR
compiles, for the llama3-8b (32 q heads, 8 kv heads, head dim 128) and SmolLM2-135M (9 / 3 / 64) shapes, fp16,
page 16, ember's kernel (in a few launch configs, and bf16 for llama) and TVM's original into DIR/attn.so (sm_90),
writes DIR/cases.json, and compiles tiny llama models (head dims 64 and 128, GQA groups 2, 4, 8) for cpu, for cuda
and for cuda with EMBER_CUDA_ATTENTION=0 (TVM's kernel) under DIR/models.
On the GPU (torch, runtime-only TVM on PYTHONPATH):
    python tools/attention_bench.py run DIR OUT.jsonl
(1) kernels: random pages behind a random non-contiguous page table, contexts 1, 17, 130, 2048, 8192 at batch 1,
batch 16 at 130 and 2048, and a ragged batch with an empty sequence; outputs poisoned with NaN first; output and lse
against a torch fp32 reference from the same pages; then each timed over CUDA-graph replays that rotate page
tables over > 256 MB of pages (more than the L2). (2) models: the same prompts in every build, decode1 steps and
batched decode of 4 sequences of different lengths fed the cpu build's tokens, logits compared. JSON lines.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

SHAPES = {"llama3_8b": (32, 8, 128), "smollm2": (9, 3, 64), "group8": (16, 2, 64)}  # (h_q, h_kv, d)
PAGE = 16
# SplitConfig fields: (warps, tokens in flight per lane (0: by group), split blocks wanted, min chunk tokens)
CONFIGS = [(4, 0, 528, 32), (4, 0, 264, 32), (4, 2, 528, 32), (4, 0, 1056, 64)]
CONTEXTS = [(1, 1), (1, 17), (1, 130), (1, 2048), (1, 8192), (16, 130), (16, 2048)]  # (batch, context)
RAGGED = [0, 1, 300, 16, 1000, 17, 4100]  # correctness only: uneven lengths, an empty sequence
POOL_BYTES = 256 << 20


def cases() -> list[dict]:
    out = []
    for shape in SHAPES:
        out.append({"shape": shape, "kind": "tvm", "dtype": "float16"})
        for cfg in CONFIGS:
            out.append({"shape": shape, "kind": "ember", "dtype": "float16", "config": list(cfg)})
    out.append({"shape": "llama3_8b", "kind": "ember", "dtype": "bfloat16", "config": list(CONFIGS[0])})
    out.append({"shape": "llama3_8b", "kind": "tvm", "dtype": "bfloat16"})
    for i, case in enumerate(out):
        tag = "_".join(map(str, case.get("config", [])))
        case["func"] = f"a{i:02d}_{case['shape']}_{case['kind']}_{case['dtype']}{'_' + tag if tag else ''}"
        case["default"] = case.get("config") == list(CONFIGS[0])
    return out


def _prepare() -> None:
    if "tvm" not in sys.modules:
        from ember.targets.cuda.stub_driver import prepare_cuda_compile_process

        prepare_cuda_compile_process()


def build_kernels(out: Path) -> None:
    _prepare()
    import tvm
    from tvm.relax.frontend.nn.llm._decode_kernels import _attention_decode

    from ember.targets.cuda import attention, pipeline
    from ember.targets.cuda.nvcc import multi_arch_compile

    out.mkdir(parents=True, exist_ok=True)
    target = pipeline.cuda_target(["sm_90"])
    todo = cases()
    funcs = {}
    tvm_name = {}
    for case in todo:
        if case["kind"] == "tvm":
            h_q, h_kv, d = SHAPES[case["shape"]]
            funcs[case["func"]] = _attention_decode(h_kv, h_q, d, case["dtype"], False, {}, target, PAGE)
            tvm_name[(case["shape"], case["dtype"])] = case["func"]
    for case in todo:
        if case["kind"] == "ember":
            h_q, h_kv, d = SHAPES[case["shape"]]
            cfg = attention.SplitConfig(*case["config"])
            funcs[case["func"]] = attention.decode_paged(h_q, h_kv, d, PAGE, case["dtype"], cfg,
                                                         inline_rope_kernel=tvm_name[(case["shape"], case["dtype"])])
    funcs = {name: f.with_attr("global_symbol", name) for name, f in funcs.items()}
    start = time.perf_counter()
    with target, tvm.transform.PassContext(opt_level=3, config=pipeline.PASS_CONFIG), \
            multi_arch_compile(["sm_90"]) as stats:
        lib = tvm.compile(tvm.IRModule(funcs), target=target)
    lib.export_library(str(out / "attn.so"))
    print(f"{len(funcs)} kernels compiled in {time.perf_counter() - start:.1f} s (nvcc {stats.seconds:.1f} s)")
    (out / "cases.json").write_text(json.dumps(todo, indent=1))


# tiny llamas: (hidden, heads, kv heads) -> head dim hidden / heads
MODELS = {"d64_g2": (256, 4, 2), "d128_g4": (512, 4, 1), "d64_g8": (512, 8, 1)}
BUILDS = {"cpu": (["--target", "cpu"], {}), "cuda": (["--target", "cuda:sm_90"], {}),
          "cuda-tvm-attn": (["--target", "cuda:sm_90"], {"EMBER_CUDA_ATTENTION": "0"})}


def build_models(root: Path) -> None:
    import torch
    import transformers

    for name, (hidden, heads, kv) in MODELS.items():
        torch.manual_seed(1)
        config = transformers.LlamaConfig(vocab_size=256, hidden_size=hidden, intermediate_size=512,
                                          num_hidden_layers=2, num_attention_heads=heads, num_key_value_heads=kv,
                                          max_position_embeddings=2048)
        hf = transformers.AutoModelForCausalLM.from_config(config)
        hf.save_pretrained(root / name / "hf")
        for build, (args, env) in BUILDS.items():
            out = root / name / build
            subprocess.run(["ember", "compile", "--model", str(root / name / "hf"), "--quant", "q0f16", "-o",
                            str(out), "--force", *args], check=True, stdout=subprocess.DEVNULL,
                           env={**os.environ, **env})
            print(f"built {out}", flush=True)


# -- on the GPU ------------------------------------------------------------------------------------------------------
def _layout(torch, lengths: list[int], pool_pages: int, gen) -> tuple:
    """(indptr, values, last) of sequences of `lengths` on random distinct pages out of pool_pages."""
    counts = [-(-n // PAGE) for n in lengths]
    perm = torch.randperm(pool_pages, generator=gen)[:sum(counts)].to(torch.int32)
    indptr = torch.tensor([0] + list(torch.tensor(counts).cumsum(0).tolist()), dtype=torch.int32)
    last = torch.tensor([n - (c - 1) * PAGE if c else 0 for n, c in zip(lengths, counts)], dtype=torch.int32)
    return indptr.cuda(), perm.cuda(), last.cuda()


def _reference(torch, q, pages, indptr, values, last, sm_scale: float, h_kv: int):
    """fp32 attention output and TVM's lse (log2-sum-exp of scores * sm_scale * log2 e) per (sequence, q head)."""
    b_count, h_q, d = q.shape
    group = h_q // h_kv
    out = torch.zeros((b_count, h_q, d), dtype=torch.float32, device="cuda")
    lse = torch.full((b_count, h_q), -5e4, dtype=torch.float32, device="cuda")
    ip, vals, lst = indptr.tolist(), values.long(), last.tolist()
    for b in range(b_count):
        if ip[b] == ip[b + 1]:
            continue
        sel = vals[ip[b]:ip[b + 1]]
        n = (ip[b + 1] - ip[b] - 1) * PAGE + lst[b]
        k = pages[sel, 0].float().permute(1, 0, 2, 3).reshape(h_kv, -1, d)[:, :n]
        v = pages[sel, 1].float().permute(1, 0, 2, 3).reshape(h_kv, -1, d)[:, :n]
        qb = q[b].float().reshape(h_kv, group, d)
        s = torch.einsum("hgd,hnd->hgn", qb, k) * sm_scale
        out[b] = torch.einsum("hgn,hnd->hgd", torch.softmax(s, -1), v).reshape(h_q, d)
        lse[b] = (torch.logsumexp(s, -1) * math.log2(math.e)).reshape(h_q)
    return out, lse


def _graph_time(torch, tvm_ffi, launch, count: int, per_graph: int, replays: int = 10) -> tuple[float, str]:
    """Median µs per launch over CUDA-graph replays (launch(i) on page table i % count); plain launches between
    events if the capture fails."""
    for i in range(count):
        launch(i)
    torch.cuda.synchronize()
    try:
        graph = torch.cuda.CUDAGraph()
        with tvm_ffi.use_torch_stream(torch.cuda.graph(graph)):
            for i in range(per_graph):
                launch(i % count)
        run, how = graph.replay, "graph"
        run()
    except Exception as err:  # noqa: BLE001 - fall back and say so
        print(f"graph capture failed ({err}); timing plain launches", flush=True)
        torch.cuda.synchronize()

        def run():
            for i in range(per_graph):
                launch(i % count)
        how = "launches"
    torch.cuda.synchronize()
    times = []
    for _ in range(replays):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        run()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) * 1e3 / per_graph)
    return sorted(times)[len(times) // 2], how


def run_kernels(root: Path, out) -> int:
    import torch
    from ember.runtime.tvm_import import ensure_device_runtime, import_tvm

    tvm = import_tvm()
    ensure_device_runtime("cuda")
    import tvm_ffi

    lib = tvm.runtime.load_module(str(root / "attn.so"))
    todo = json.loads((root / "cases.json").read_text())
    gen = torch.Generator()
    gpu_gen = torch.Generator(device="cuda")
    failed = 0
    rows = []
    workloads = [(b, [n] * b, False) for b, n in CONTEXTS] + [(len(RAGGED), RAGGED, True)]
    for shape, (h_q, h_kv, d) in SHAPES.items():
        for dtype in ("float16", "bfloat16"):
            mine = [c for c in todo if c["shape"] == shape and c["dtype"] == dtype]
            if not mine:
                continue
            tdtype = getattr(torch, dtype)
            page_bytes = 2 * h_kv * PAGE * d * 2
            sm_scale = 1 / math.sqrt(d)
            for batch, lengths, ragged in workloads:
                gen.manual_seed(batch * 100003 + sum(lengths))
                gpu_gen.manual_seed(batch * 100003 + sum(lengths))
                need = sum(-(-n // PAGE) for n in lengths)
                pool_pages = max(POOL_BYTES // page_bytes, 2 * need)
                pages = torch.randn((pool_pages, 2, h_kv, PAGE, d), generator=gpu_gen, device="cuda").to(tdtype)
                q = torch.randn((batch, h_q, d), generator=gpu_gen, device="cuda").to(tdtype)
                copies = min(32, max(1, pool_pages // max(need, 1)))
                tables = [_layout(torch, lengths, pool_pages, gen) for _ in range(copies)]
                ref_o, ref_lse = _reference(torch, q, pages, *tables[0], sm_scale, h_kv)
                out_t = torch.empty((batch, h_q, d), dtype=tdtype, device="cuda")
                lse_t = torch.empty((batch, h_q), dtype=torch.float32, device="cuda")
                zeros = torch.zeros((batch,), dtype=torch.int32, device="cuda")
                T = tvm.runtime.from_dlpack
                args_q, args_p, args_o, args_l, args_z = T(q), T(pages), T(out_t), T(lse_t), T(zeros)
                tv = [[T(x) for x in tab] for tab in tables]
                for case in mine:
                    f = lib[case["func"]]

                    def launch(i, f=f):
                        ip, vals, last = tv[i % len(tv)]
                        f(args_q, args_p, ip, vals, last, args_z, args_z, args_o, args_l, 0, 1.0, 10000.0, sm_scale)

                    out_t.fill_(float("nan"))
                    lse_t.fill_(float("nan"))
                    launch(0)
                    torch.cuda.synchronize()
                    finite = bool(torch.isfinite(out_t).all() and torch.isfinite(lse_t).all())
                    err_o = float((out_t.float() - ref_o).abs().max())
                    err_lse = float((lse_t - ref_lse).abs().max())
                    tol = 4e-2 if dtype == "bfloat16" else 4e-3
                    ok = finite and err_o < tol and err_lse < 1e-3 * max(1.0, float(ref_lse.abs().max()))
                    us, how = (None, None) if ragged else _graph_time(torch, tvm_ffi, launch, len(tv),
                                                                      per_graph=max(len(tv), 40))
                    row = {"shape": shape, "h_q": h_q, "h_kv": h_kv, "d": d, "dtype": dtype, "kind": case["kind"],
                           "config": case.get("config"), "default": case["default"], "batch": batch,
                           "context": "ragged" if ragged else lengths[0], "lengths": lengths if ragged else None,
                           "us": round(us, 2) if us else None, "timing": how, "kv_bytes": need * page_bytes,
                           "max_err_out": err_o, "max_err_lse": err_lse, "finite": finite, "ok": ok}
                    failed += not ok
                    rows.append(row)
                    out.write(json.dumps(row) + "\n")
                    out.flush()
                print(f"{shape} {dtype} batch {batch} context {'ragged' if ragged else lengths[0]}: "
                      + ", ".join(f"{r['kind']}{r['config'] or ''} {r['us']} us err {r['max_err_out']:.1e}"
                                  for r in rows[-len(mine):]), flush=True)
                del pages, tables, tv
                torch.cuda.empty_cache()
    print(f"{'shape':10} {'dtype':8} {'b':>3} {'ctx':>6} {'tvm us':>8} {'ember us':>8} {'x':>6} {'err':>8} | best cfg")
    for key in dict.fromkeys((r["shape"], r["dtype"], r["batch"], r["context"]) for r in rows):
        group = [r for r in rows if (r["shape"], r["dtype"], r["batch"], r["context"]) == key]
        tvm_r = next((r for r in group if r["kind"] == "tvm"), None)
        dflt = next((r for r in group if r["default"]), None)
        ems = [r for r in group if r["kind"] == "ember" and r["us"]]
        best = min(ems, key=lambda r: r["us"]) if ems else None
        t = tvm_r["us"] if tvm_r and tvm_r["us"] else float("nan")
        e = dflt["us"] if dflt and dflt["us"] else float("nan")
        err = dflt["max_err_out"] if dflt else float("nan")
        print(f"{key[0]:10} {key[1]:8} {key[2]:3} {key[3]!s:>6} {t:8.2f} {e:8.2f} {t / e:6.2f} {err:8.1e} | "
              f"{best['config'] if best else '-'} {best['us'] if best else ''}")
    print(f"kernel failures: {failed}", flush=True)
    return failed


def _steps(engine, prompts: list[list[int]], tokens: list[list[int]]):
    """Logits of prefill then len(tokens[0]) - 1 decode steps of all sequences together (batched `decode`, or
    decode1 for one sequence), fed `tokens`."""
    import numpy as np

    runner = engine.runner
    runner.reset()
    ids = list(range(len(prompts)))
    for i in ids:
        runner.add_sequence(i)
    logits = [runner.prefill(ids, prompts)]
    for step in range(len(tokens[0]) - 1):
        logits.append(runner.decode(ids, [t[step] for t in tokens]).copy())
    runner.reset()
    return np.stack(logits)  # (steps, sequences, vocab)


def run_models(root: Path, out) -> int:
    import numpy as np

    import ember

    failed = 0
    rng = np.random.default_rng(7)
    for name in MODELS:
        base = root / "models" / name
        if not base.is_dir():
            continue
        # the cpu build is the reference where it was carried to the GPU, else TVM's cuda kernel's build
        ref_build = "cpu" if (base / "cpu").is_dir() else "cuda-tvm-attn"
        cpu = ember.load(base / ref_build, device="cpu" if ref_build == "cpu" else "cuda")
        vocab = cpu.manifest.vocab_size
        for label, lens in (("decode1", [40]), ("batch4", [20, 90, 300, 7])):
            prompts = [rng.integers(0, vocab, size=n).tolist() for n in lens]
            tokens = [rng.integers(0, vocab, size=24).tolist() for _ in lens]  # teacher-forced, same in every build
            ref = _steps(cpu, prompts, tokens)
            scale = float(np.abs(ref).max())
            row = {"model": name, "case": label, "prompt_lengths": lens, "logit_scale": scale, "reference": ref_build}
            got = {}
            for build in ("cuda", "cuda-tvm-attn"):
                engine = ember.load(base / build, device="cuda")
                got[build] = _steps(engine, prompts, tokens)
                row[build] = {"decode_max_err_vs_cpu": float(np.abs(got[build][1:] - ref[1:]).max() / scale),
                              "top1_agree": float((got[build].argmax(-1) == ref.argmax(-1)).mean())}
            row["decode_max_err_vs_tvm_attn"] = float(np.abs(got["cuda"][1:] - got["cuda-tvm-attn"][1:]).max() / scale)
            row["ok"] = bool(row["cuda"]["decode_max_err_vs_cpu"] < 5e-2 and row["decode_max_err_vs_tvm_attn"] < 2e-2
                             and np.isfinite(got["cuda"]).all())
            failed += not row["ok"]
            out.write(json.dumps(row) + "\n")
            out.flush()
            print(json.dumps(row), flush=True)
    return failed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("dir", type=Path)
    b.add_argument("--no-models", action="store_true")
    r = sub.add_parser("run")
    r.add_argument("dir", type=Path)
    r.add_argument("out", type=Path)
    r.add_argument("--no-models", action="store_true")
    args = parser.parse_args()
    if args.cmd == "build":
        build_kernels(args.dir)
        if not args.no_models:
            build_models(args.dir / "models")
        return 0
    failed = 0
    with args.out.open("w") as out:
        import torch

        out.write(json.dumps({"device": torch.cuda.get_device_name()}) + "\n")
        failed += run_kernels(args.dir, out)
        if not args.no_models:
            try:
                failed += run_models(args.dir, out)
            except Exception as err:  # noqa: BLE001 - the kernel rows above stay valid
                print(f"model parity failed to run: {err!r}", flush=True)
                failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
