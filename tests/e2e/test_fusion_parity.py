"""Fusion changes kernels, not numbers: tiny HF models of each family (test_hf_parity's CASES) compiled for cpu
with and without the fusion passes give the same logits as each other and as HF, and a decode step launches
fewer kernels. The cuda test checks that the fused model builds and schedules for sm_90."""
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from test_hf_parity import CASES, Case, prompt

import ember
from ember.compiler import CompileRequest, compile_model


@dataclass
class Pair:
    case: Case
    hf: torch.nn.Module
    fused: object  # ember Engine
    unfused: object
    folders: dict


def save_hf(case: Case, folder):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_config(case.config, attn_implementation="eager").eval()
    with torch.no_grad():  # random biases, so the fused bias is really checked
        for name, p in hf.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0, 0.5)
    hf.save_pretrained(folder)
    return hf


# test_hf_parity's cases whose fusions are checked (each compiles twice): the first four families, plus one of
# each later architecture whose graph differs (q/k norms, a checkpoint already fused, GeGLU with post-norms)
FUSION_CASES = ("llama-gqa-llama3rope", "llama-tied-bias", "mistral-window", "qwen2-tied", "qwen3-qknorm",
                "phi3-partial-tied", "gemma3-local-global")
# families where q/k/v + rope become one paged_attention_qkv and gate/up one swiglu (Qwen3's q/k norms sit
# between the projections and rope; Gemma's MLP is GeGLU)
ALL_FUSIONS = ("llama", "mistral", "qwen2", "phi3")


@pytest.fixture(scope="session", params=FUSION_CASES)
def pair(request, tmp_path_factory):
    case = CASES[request.param]
    folder = tmp_path_factory.mktemp(f"fusion-{request.param}")
    hf = save_hf(case, folder / "hf")
    folders, engines = {}, {}
    for fuse in (True, False):
        folders[fuse] = compile_model(CompileRequest(model=str(folder / "hf"), target="cpu", fuse=fuse,
                                                     output=str(folder / f"art-fuse{int(fuse)}")))
        engines[fuse] = ember.load(folders[fuse], device="cpu")
    return Pair(case, hf, engines[True], engines[False], folders)


def test_fused_ir_and_weights(pair):
    ir = (pair.folders[True] / "ir.txt").read_text()
    assert "add_rms_norm(" in ir and ir != (pair.folders[False] / "ir.txt").read_text()
    if pair.case.family not in ALL_FUSIONS:
        return
    assert "paged_attention_qkv(" in ir and "swiglu(" in ir
    assert " split(" not in ir and " concat(" not in ir and "silu(" not in ir
    names = [p["name"] for p in json.loads((pair.folders[True] / "manifest.json").read_text())["params"]]
    assert "model.layers.0.self_attn.qkv_proj.weight" in names and "model.layers.1.mlp.gate_up_proj.weight" in names
    assert not [n for n in names if ".q_proj." in n or ".gate_proj." in n or ".up_proj." in n]
    assert "paged_attention_qkv" not in (pair.folders[False] / "ir.txt").read_text()


def test_fused_logits_match_unfused_and_hf(pair):
    ids = prompt(pair.case)
    fused, unfused = pair.fused.score(ids), pair.unfused.score(ids)
    with torch.no_grad():
        ref = pair.hf(torch.tensor([ids])).logits[0].numpy()
    np.testing.assert_allclose(fused, unfused, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(fused, ref, atol=2e-5, rtol=1e-4)


def test_fused_decode_matches_unfused(pair):
    ids = prompt(pair.case, seed=3)
    split = len(ids) // 2
    steps = {}
    for fuse, engine in ((True, pair.fused), (False, pair.unfused)):
        runner = engine.runner
        runner.reset()
        runner.add_sequence(0)
        rows = [runner.prefill([0], [ids[:split]])[0]]
        rows += [runner.decode([0], [token])[0] for token in ids[split:]]  # teacher-forced decode steps
        runner.remove_sequence(0)
        steps[fuse] = np.stack(rows)
    assert steps[True].shape == (len(ids) - split + 1, pair.case.config.vocab_size)
    np.testing.assert_allclose(steps[True], steps[False], atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        ref = pair.hf(torch.tensor([ids])).logits[0, split - 1:].numpy()
    np.testing.assert_allclose(steps[True], ref, atol=2e-5, rtol=1e-4)


def decode_calls(engine, ids) -> list[str]:
    """The functions the VM calls during one decode step (kernels and VM builtins)."""
    runner, called = engine.runner, []

    def instrument(func, symbol, before_run, ret_value, *args):
        if before_run:
            called.append(symbol)
        return 0

    runner.reset()
    runner.add_sequence(0)
    runner.prefill([0], [ids[:4]])
    vm = runner.artifact.vm
    vm.set_instrument(instrument)
    try:
        runner.decode([0], [ids[4]])
    finally:
        vm.set_instrument(None)
        runner.remove_sequence(0)
    return called


def is_kernel(symbol: str) -> bool:
    return not symbol.startswith("vm.builtin.") and symbol != "shape_func" and "symbolic_expr" not in symbol


def test_decode_launches_fewer_kernels(pair):
    ids = prompt(pair.case)
    calls = {fuse: decode_calls(engine, ids) for fuse, engine in ((True, pair.fused), (False, pair.unfused))}
    kernels = {fuse: [s for s in c if is_kernel(s)] for fuse, c in calls.items()}
    layers = pair.case.config.num_hidden_layers
    print(f"\n{pair.case.family}: decode step kernels {len(kernels[False])} -> {len(kernels[True])}, "
          f"VM calls {len(calls[False])} -> {len(calls[True])}")
    if pair.case.family not in ("llama", "mistral", "qwen2"):  # q/k norms, a fused checkpoint, GeGLU: fewer fusions
        assert len(kernels[True]) < len(kernels[False])
        return
    assert any("concatenate" in k for k in kernels[False]) and not any("concatenate" in k for k in kernels[True])
    # per layer: q, k, v GEMMs + concat -> one qkv GEMM; up + gate*silu*up -> gate_up + swiglu; on cpu the GEMMs
    # are opaque native calls, so the residual adds also join the norms (add_rms_norm) instead of GEMM epilogues
    assert len(kernels[True]) <= len(kernels[False]) - 3 * layers
    assert len(calls[True]) < len(calls[False])


def test_fused_kernels_compute_in_fp32_for_fp16():
    import tvm
    from tvm.relax.frontend import nn

    from ember.targets.lower_fused import rms_norm_kernel, swiglu_kernel

    class Kernels(nn.Module):
        def forward(self, x, w, gate_up):
            return rms_norm_kernel(x, w, 1e-5), swiglu_kernel(gate_up)

    f16 = lambda *shape: nn.spec.Tensor(list(shape), "float16")  # noqa: E731
    spec = {"forward": {"x": f16(2, 4096), "w": f16(4096), "gate_up": f16(2, 64),
                        "$": {"param_mode": "none", "effect_mode": "none"}}}
    mod, _ = Kernels().export_tvm(spec=spec)
    vm = tvm.runtime.vm.VirtualMachine(tvm.compile(mod, target="llvm"), tvm.cpu())
    rng = np.random.default_rng(0)
    x = (1 + rng.random((2, 4096))).astype(np.float16)  # sum of squares ~ 10^4: fp16 accumulation stalls
    w = rng.standard_normal(4096).astype(np.float16)
    gate_up = (4 * rng.standard_normal((2, 64))).astype(np.float16)
    normed, act = (t.numpy() for t in vm["forward"](*(tvm.runtime.tensor(a) for a in (x, w, gate_up))))
    xf, gf, uf = x.astype(np.float32), gate_up[:, :32].astype(np.float32), gate_up[:, 32:].astype(np.float32)
    ref_norm = xf / np.sqrt((xf * xf).mean(-1, keepdims=True) + 1e-5) * w.astype(np.float32)
    ref_act = gf / (1 + np.exp(-gf)) * uf
    assert normed.dtype == act.dtype == np.float16
    np.testing.assert_allclose(normed.astype(np.float32), ref_norm, rtol=1e-3, atol=1e-3)  # one fp16 rounding
    np.testing.assert_allclose(act.astype(np.float32), ref_act, rtol=1e-3, atol=1e-3)


CUDA_SCRIPT = textwrap.dedent('''
    import json, re, sys
    from ember.targets.cuda.stub_driver import prepare_cuda_compile_process
    prepare_cuda_compile_process()
    import ember.targets.cuda.nvcc as nvcc
    from ember.compiler import CompileRequest, compile_model

    sources = []
    compile_fatbin = nvcc.compile_fatbin
    def spy(code, archs, stats=None):
        sources.append(code)
        return compile_fatbin(code, archs, stats)
    nvcc.compile_fatbin = spy
    out = {}
    for fuse in (True, False):
        sources.clear()
        compile_model(CompileRequest(model=sys.argv[1], target="cuda:sm_90", fuse=fuse,
                                     output=f"{sys.argv[2]}/cuda-fuse{int(fuse)}"))
        names = re.findall(r"__global__ void (?:__launch_bounds__[(][0-9]+[)] )?([A-Za-z0-9_]+)[(]", sources[0])
        out[str(fuse)] = names
    print(json.dumps(out))
''')


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc (CUDA 13 toolkit)")
def test_fused_model_builds_for_cuda(tmp_path):
    save_hf(CASES["qwen2-tied"], tmp_path / "hf")
    done = subprocess.run([sys.executable, "-c", CUDA_SCRIPT, str(tmp_path / "hf"), str(tmp_path)],
                          capture_output=True, text=True, timeout=900, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert done.returncode == 0, done.stderr[-3000:]
    kernels = json.loads(done.stdout.strip().splitlines()[-1])
    fused, unfused = kernels["True"], kernels["False"]
    assert {"swiglu_kernel", "rms_norm_kernel"} <= {re.sub(r"\d+_kernel", "_kernel", k) for k in fused}
    assert not [k for k in fused if "concatenate" in k] and [k for k in unfused if "concatenate" in k]
    # one GPU kernel per fused op (dlight splits a PrimFunc it cannot schedule whole into several)
    assert not [k for k in fused if re.fullmatch(r"(swiglu|rms_norm)\d*_kernel_\d+", k)]
    assert len(fused) < len(unfused)
