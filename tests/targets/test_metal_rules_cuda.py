"""Metal's schedule rules on cuda (tools/metal_rules_on_cuda.py): what runs here, and the numerics on a GPU.

Here (no GPU): the portable rule lists schedule a tiny model's kernels for cuda with nothing Metal-only left,
the simdgroup GEMM rule applies (emulated) to the prefill linear layers, and cuda codegen accepts the result.
On a GPU box (marked gpu; skipped, with the reason, where there is no NVIDIA GPU or no nvcc): a cuda build with
metal's rules matches the cpu build of the same model and weights as closely as the stock cuda build does.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TOOL = Path(__file__).parents[2] / "tools" / "metal_rules_on_cuda.py"
CONFIG = {"model_type": "llama", "vocab_size": 320, "hidden_size": 64, "intermediate_size": 160,
          "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5,
          "max_position_embeddings": 256, "tie_word_embeddings": False}


def _gpu_visible() -> bool:
    if shutil.which("nvidia-smi") is None:
        return False
    done = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
    return done.returncode == 0 and "GPU" in done.stdout


def test_portable_rules_schedule_cuda_kernels_without_metal_constructs(monkeypatch):
    import tvm
    from tvm import tirx

    from ember.frontend.config import ModelConfig
    from ember.frontend.models import build_module
    from ember.passes.manager import PassManager, default_pipeline
    from ember.targets.cuda import pipeline as cuda
    from ember.targets.lower import lower
    from ember.targets.metal import MetalTarget
    from ember.targets.metal.pipeline import metal_rules
    from ember.targets.metal.portable import metal_only_scopes

    module = PassManager(default_pipeline("q4f16_1")).run(
        build_module(ModelConfig.from_dict(CONFIG), "tiny", dtype="float16", static_decode=True))
    relax_mod, _ = lower(module, MetalTarget.parse("metal"))  # the metal build's IR (not cuda's own GEMV kernels)
    rules = metal_rules(portable=True)
    applied: list[str] = []
    for rule in rules.prefill + rules.decode:
        def apply(func, target, tune, rule=rule, inner=rule.apply):
            space = inner(func, target, tune)
            if space is not None:
                applied.append(type(rule.rule).__name__)
            return space
        monkeypatch.setattr(rule, "apply", apply)
    monkeypatch.setattr(cuda, "prefill_rules", lambda: rules.prefill)
    monkeypatch.setattr(cuda, "decode_rules", lambda: rules.decode)
    target = cuda.cuda_target(["sm_90"])
    cuda.preload_tensor_intrinsics()
    with target, tvm.transform.PassContext(opt_level=3, config=cuda.PASS_CONFIG):
        scheduled = cuda.cuda_relax_pipeline(target)(relax_mod)
    assert applied.count("SimdgroupMatmul") == 4, applied  # prefill qkv, o, gate_up, down
    assert {"GEMV", "Matmul", "Fallback", "Reduction"} <= set(applied)
    assert not any(rule.refused for rule in rules.prefill + rules.decode)
    funcs = {gv.name_hint: f for gv, f in scheduled.functions_items() if isinstance(f, tirx.PrimFunc)}
    assert not {name for name, f in funcs.items() if metal_only_scopes(f)}
    emulated = {n: f for n, f in funcs.items() if "q4f16_1_linear" in n and "shared" in f.script()
                and "total_len" in f.script()}
    assert emulated
    with target:  # cuda codegen (CUDA source here: no CUDA runtime in this process) takes the metal schedules
        built = tvm.tirx.build(tvm.IRModule({n: f.with_attr("global_symbol", n) for n, f in emulated.items()}),
                               target=target)
    assert built is not None


@pytest.mark.gpu
@pytest.mark.skipif(not _gpu_visible(), reason="needs an NVIDIA GPU (nvidia-smi -L lists none)")
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc to build the cuda artifacts")
def test_metal_rules_on_cuda_match_the_cpu_build(tmp_path):
    subprocess.run([sys.executable, str(TOOL), "build", str(tmp_path)], check=True, timeout=1800)
    done = subprocess.run([sys.executable, str(TOOL), "check", str(tmp_path)], capture_output=True, text=True,
                          timeout=600)
    report = json.loads(done.stdout)
    metal, stock = report["cuda-metal-rules"], report["cuda-stock"]
    for step in ("prefill", "decode1", "decode"):
        assert metal[step] <= report["tolerance"][step], (step, report)
    assert metal["top1_agree"] >= 0.95 and stock["top1_agree"] >= 0.95, report
    assert report["ok"] and done.returncode == 0, report
