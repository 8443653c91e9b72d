"""ember's cuda GEMV on a GPU against gguf's own dequantizer (Q4_0 = q4f16, Q4_1 = q4f16_1) and an fp64 matmul.

Skipped without a CUDA GPU (CI). On a box with TVM's compiler, nvcc and a GPU it builds its kernels itself; on a
GPU box with the runtime only, build them elsewhere and point EMBER_GEMV_TEST_DIR at the folder:
    python -c "import sys; sys.path.insert(0, 'tests/targets'); import test_cuda_gemv_gpu as t; t.build(DIR)"
    EMBER_GEMV_TEST_DIR=DIR python -m pytest -m gpu tests/targets/test_cuda_gemv_gpu.py
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

TOOLS = Path(__file__).resolve().parents[2] / "tools"
# (scheme, N, K, GemvConfig fields, bias): the Llama-3-8B o shape with weights in registers and through the
# cp.async ring, a partial last step (K/32 = 33) with rows that do not fill the last block, and a bias
CASES = [(s, n, k, cfg, bias) for s in ("q4f16", "q4f16_1") for n, k, cfg, bias in (
    (4096, 4096, (4, 2, 4, 2, 0), False), (4096, 4096, (4, 2, 4, 2, 1), False),
    (1000, 1056, (4, 2, 2, 2, 0), False), (1000, 1056, (4, 4, 4, 2, 1), True))]
GGML = {"q4f16": "Q4_0", "q4f16_1": "Q4_1"}


def _case_list() -> list[dict]:
    return [{"scheme": s, "shape": f"{n}x{k}", "n": n, "k": k, "kind": "ember", "config": list(cfg), "bias": bias,
             "func": f"t{i:02d}"} for i, (s, n, k, cfg, bias) in enumerate(CASES)]


def build(out: Path) -> None:
    sys.path.insert(0, str(TOOLS))
    import gemv_bench

    gemv_bench.build_cases(Path(out), _case_list())


def _gpu() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not _gpu(), reason="needs a CUDA GPU")]


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    from ember.runtime.tvm_import import ensure_device_runtime, import_tvm

    tvm = import_tvm()
    root = os.environ.get("EMBER_GEMV_TEST_DIR")
    if root is None:
        root = tmp_path_factory.mktemp("gemv")
        build(root)
    ensure_device_runtime("cuda")
    cases = {c["func"]: c for c in json.loads((Path(root) / "cases.json").read_text())}
    assert [c["config"] for c in cases.values()] == [list(c[3]) for c in CASES], "stale EMBER_GEMV_TEST_DIR"
    return tvm, tvm.runtime.load_module(str(Path(root) / "gemv.so")), cases


@pytest.mark.parametrize("func", [f"t{i:02d}" for i in range(len(CASES))])
def test_gemv_matches_gguf_dequantize(lib, func):
    import gguf
    import torch

    from ember.passes.quant_schemes import from_ggml_blocks

    tvm, module, cases = lib
    case = cases[func]
    n, k, ggml_type = case["n"], case["k"], GGML[case["scheme"]]
    rng = np.random.default_rng(int(func[1:]))
    w = (rng.standard_normal((n, k)) * 0.02).astype(np.float32)
    raw = gguf.quants.quantize(w, gguf.GGMLQuantizationType[ggml_type])  # uint8 [n, bytes per row]
    reference_w = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType[ggml_type]).astype(np.float64)
    packed = from_ggml_blocks(raw, ggml_type, k)
    x = rng.standard_normal(k).astype(np.float16)
    bias = rng.standard_normal(n).astype(np.float16)
    ref = reference_w @ x.astype(np.float64) + (bias.astype(np.float64) if case["bias"] else 0.0)

    dev = lambda a: tvm.runtime.from_dlpack(torch.from_numpy(np.ascontiguousarray(a)).cuda())  # noqa: E731
    y = torch.full((1, 1, n), float("nan"), dtype=torch.float16, device="cuda")
    args = [dev(x.reshape(1, 1, k)), *[dev(p) for p in packed.pieces()]]
    args += [dev(bias)] if case["bias"] else []
    module[func](*args, tvm.runtime.from_dlpack(y))
    got = y.double().cpu().numpy().reshape(-1)
    assert np.isfinite(got).all(), "rows left unwritten or overflowed"
    rel = np.linalg.norm(got - ref) / np.linalg.norm(ref)
    assert rel < 1e-3, rel  # fp16 output and fp16x2 partial sums over 16 codes: ~2-6e-4
