"""Quantized kernels for cuda (no GPU needed): which dlight rule schedules each, and a full compile with nvcc."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
from kernel_harness import buffer_allocations
from model_fixtures import random_llama

from ember.frontend.config import ModelConfig
from ember.frontend.models import build_module
from ember.passes.manager import PassManager, default_pipeline

CONFIG = {"model_type": "llama", "vocab_size": 320, "hidden_size": 256, "intermediate_size": 512,
          "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5,
          "max_position_embeddings": 256, "tie_word_embeddings": False}
PACKED_DTYPES = ("uint32", "int8")


def _dtypes(func) -> list[str]:
    return [str(getattr(p.ty, "dtype", "")) for p in func.params]


@pytest.mark.parametrize("scheme", ["q4f16_1", "q8f16"])
def test_cuda_rules_for_quantized_kernels(scheme, monkeypatch):
    """decode1 (batch 1, static): GEMV; prefill: Matmul; the dequantized weight never lands in global memory.
    This is the generic lowering's schedule: ember's own GEMV (tests/targets/test_cuda_gemv.py) is turned off."""
    import tvm

    from ember.targets.cuda import CudaTarget
    from ember.targets.cuda import pipeline as cuda
    from ember.targets.gpu_schedule import is_prefill_kernel, prefill_dims
    from ember.targets.lower import lower

    monkeypatch.setenv("EMBER_CUDA_GEMV", "0")
    module = PassManager(default_pipeline(scheme)).run(
        build_module(ModelConfig.from_dict(CONFIG), "tiny", dtype="float16", static_decode=True))
    target = cuda.cuda_target(["sm_90"])
    relax_mod, _ = lower(module, CudaTarget.parse("cuda:sm_90"))
    assert prefill_dims(relax_mod) == ("total_len",)
    applied: list[tuple[str, bool, list[str]]] = []  # rule, prefill kernel?, buffer dtypes

    def spied(make_rules):
        def make():
            rules = make_rules()
            for rule in rules:
                def apply(func, func_target, tune, rule=rule, inner=rule.apply):
                    space = inner(func, func_target, tune)
                    if space is not None:
                        applied.append((type(rule).__name__, is_prefill_kernel(func, ("total_len",)), _dtypes(func)))
                    return space
                rule.apply = apply
            return rules
        return make

    monkeypatch.setattr(cuda, "prefill_rules", spied(cuda.prefill_rules))
    monkeypatch.setattr(cuda, "decode_rules", spied(cuda.decode_rules))
    cuda.preload_tensor_intrinsics()
    with tvm.transform.PassContext(opt_level=3, config=cuda.PASS_CONFIG):
        scheduled = cuda.cuda_relax_pipeline(target)(relax_mod)

    reads_codes = [(rule, prefill, dtypes) for rule, prefill, dtypes in applied
                   if any(d in PACKED_DTYPES for d in dtypes)]
    linears = [(rule, prefill) for rule, prefill, dtypes in reads_codes if dtypes[0] != "int32"]
    gathers = {rule for rule, _, dtypes in reads_codes if dtypes[0] == "int32"}  # quant_embedding: ids first
    # decode1 has a static batch of 1 (qkv, o, gate_up, down, head): all GEMV; prefill's GEMMs get Matmul
    decode1 = [rule for rule, prefill in linears if not prefill]
    assert decode1.count("GEMV") == 5, linears
    assert {rule for rule, prefill in linears if prefill} == {"Matmul"}, linears
    assert gathers == {"Fallback"}
    with target:
        funcs = {gv: f if "target" in f.attrs else f.with_attr("target", target)
                 for gv, f in scheduled.functions_items() if isinstance(f, tvm.tirx.PrimFunc)}
        allocations = buffer_allocations(tvm.IRModule(funcs))
    weight_elements = 512 * 256
    for name, sizes in allocations.items():
        assert all(size < weight_elements for size in sizes.values()), (name, sizes)


BUILD = textwrap.dedent("""
    import json, sys
    sys.modules["torch"] = None
    from ember.targets.cuda.stub_driver import prepare_cuda_compile_process
    prepare_cuda_compile_process()
    from ember.compiler import CompileRequest, compile_model
    from ember.runtime.artifact import read_manifest
    path = compile_model(CompileRequest(model=sys.argv[1], target="cuda:sm_90", quant=sys.argv[2], output=sys.argv[3]))
    manifest = read_manifest(path)
    print(json.dumps({"target": manifest.target.kind, "archs": manifest.target.archs,
                      "functions": manifest.functions, "compute_dtype": manifest.compute_dtype,
                      "schemes": sorted({p.scheme or "" for p in manifest.params})}))
""")


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc (CUDA 13 toolkit)")
def test_cuda_compile_of_a_quantized_model(tmp_path):
    """compile_model for cuda:sm_90 with q4f16_1 (q8f16 edges): cubins only, checked by check_cuda_library."""
    random_llama(seed=5, hidden_size=128, intermediate_size=256).save_pretrained(tmp_path / "hf")
    (tmp_path / "build.py").write_text(BUILD)
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "LD_LIBRARY_PATH", "TVM_CUDA_COMPILE_MODE")}
    proc = subprocess.run([sys.executable, str(tmp_path / "build.py"), str(tmp_path / "hf"), "q4f16_1",
                           str(tmp_path / "art")], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info["target"] == "cuda" and info["archs"] == ["sm_90"] and info["compute_dtype"] == "float16"
    assert "decode1" in info["functions"]
    assert info["schemes"] == ["", "q4f16_1", "q8f16"]  # norms plain, layers 4-bit, embedding and head 8-bit
    assert (tmp_path / "art" / "model.so").stat().st_size > 0
