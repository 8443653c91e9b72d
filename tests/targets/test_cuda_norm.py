"""ember's cuda add + RMSNorm kernel (targets/cuda/native_norm.py, kernels/norm.cuh), no GPU needed: which
functions take it, the launch shape, and that nvcc compiles it. Its numbers are checked on a GPU inside whole
models against the cpu build (tools/gemv_parity.py, docs/measurements/2026-12-02-h200-norm-parity.jsonl)."""
from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from ember.frontend.config import ModelConfig
from ember.frontend.models import build_module
from ember.passes.manager import PassManager, default_pipeline

CONFIG = {"model_type": "llama", "vocab_size": 320, "hidden_size": 256, "intermediate_size": 512,
          "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5,
          "max_position_embeddings": 256, "tie_word_embeddings": False}


def _norm_kernels(scheme: str, dtype: str = "float16") -> dict[str, int]:
    import tvm

    from ember.targets.cuda import CudaTarget
    from ember.targets.lower import lower

    module = PassManager(default_pipeline(scheme)).run(
        build_module(ModelConfig.from_dict(CONFIG), "tiny", dtype=dtype, static_decode=True))
    relax_mod, _ = lower(module, CudaTarget.parse("cuda:sm_90"))
    found: dict[str, int] = {}
    for gv, func in relax_mod.functions_items():
        if isinstance(func, tvm.tirx.PrimFunc):
            for name in re.findall(r'T\.call_extern\("[a-z0-9]+", "(ember::norm::[^"]+)"', func.script()):
                found[name] = found.get(name, 0) + 1
    return found


@pytest.mark.parametrize("scheme", ["q4f16", "q0f16"])
def test_every_add_rms_norm_takes_the_kernel(scheme):
    found = _norm_kernels(scheme)
    assert list(found) == ["ember::norm::add_rms_norm<256, 32, 1>"]  # one PrimFunc per shape, shared


def test_off_by_environment_and_fp32_fall_back(monkeypatch):
    assert _norm_kernels("q4f16", "float32") == {}
    monkeypatch.setenv("EMBER_CUDA_NORM", "0")
    assert _norm_kernels("q4f16") == {}


def test_launch_shape():
    from ember.targets.cuda.native_norm import launch_shape

    assert launch_shape(4096) == (512, 1)
    assert launch_shape(576) == (96, 1)  # SmolLM2: 72 chunks, rounded up to whole warps
    assert launch_shape(16384) == (1024, 2)
    with pytest.raises(ValueError):
        launch_shape(8 * 1024 * 5)


WRAPPER = """
#include "norm.cuh"
extern "C" __global__ void kern(const void* a, const void* b, const void* w, void* s, void* o) {{
  ember::norm::add_rms_norm<{args}>(a, b, w, s, o, 1e-5f); }}
"""


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH")
@pytest.mark.parametrize("args", ["4096, 512, 1", "576, 96, 1", "16384, 1024, 2"])
def test_kernel_compiles_without_spills(tmp_path, args):
    from ember.targets.cuda.device_code import KERNEL_DIR

    src = tmp_path / "k.cu"
    src.write_text(WRAPPER.format(args=args))
    result = subprocess.run(["nvcc", "-arch=sm_90", "-O3", "-std=c++17", f"-I{KERNEL_DIR}", "--cubin",
                             "-Xptxas", "-v", str(src), "-o", str(tmp_path / "k.cubin")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert re.search(r"0 bytes spill stores, 0 bytes spill loads", result.stderr), result.stderr
