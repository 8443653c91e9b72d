"""The numerics of the Metal schedules, checked on an NVIDIA GPU (no Mac at hand).

A cuda build lowered as a metal build is (generic lowerings, the KV cache's kernels made for the metal target) and
scheduled by metal's rule lists (targets/metal/pipeline.metal_rules(portable=True): every dlight rule with Apple's
configurations, the simdgroup GEMM emulated with plain loops), next to a stock cuda build and a cpu build of the
same model and weights. On the GPU the metal-rules build must match the cpu build as
closely as the stock cuda build does. What this cannot check: Apple's simdgroup_* instructions and the Metal
compiler itself (`ember verify` on a Mac does).

Here (nvcc, no GPU):   python tools/metal_rules_on_cuda.py build DIR [--quant q4f16_1] [--arch sm_90]
On the GPU box:        python tools/metal_rules_on_cuda.py check DIR      (one JSON report; exit 1 on failure)
(tests/targets/test_metal_rules_cuda.py runs both where a GPU and nvcc are present.)
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

BUILDS = ("cpu", "cuda-stock", "cuda-metal-rules")
PROMPT_LEN = 40  # > 32 rows: the prefill GEMMs run more than one row tile


def use_metal_rules_for_cuda() -> None:
    """Make cuda builds lower and schedule as metal builds do; call before the build: the generic lowerings (not
    cuda's own GEMV kernels), the KV cache's kernels made for the metal target, metal's (portable) rule lists."""
    from ember.targets.cuda import CudaTarget
    from ember.targets.cuda import pipeline as cuda
    from ember.targets.metal import MetalTarget
    from ember.targets.metal.pipeline import metal_rules

    metal = MetalTarget.parse("metal")
    CudaTarget.lowerings = lambda self: metal.lowerings()
    CudaTarget.tvm_target = lambda self: metal.tvm_target()
    cuda.prefill_rules = lambda: metal_rules(portable=True).prefill
    cuda.decode_rules = lambda: metal_rules(portable=True).decode


def save_tiny_llama(folder: Path, seed: int = 0) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=320, hidden_size=128, intermediate_size=352, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(folder)


def compile_one(build: str, hf: Path, out: Path, quant: str, arch: str) -> None:
    """One build, in this process (cuda builds need the stub driver before `import tvm`)."""
    from ember.compiler import CompileRequest, compile_model
    from ember.targets.base import parse_target

    target = "cpu" if build == "cpu" else f"cuda:{arch}"
    parse_target(target).prepare_process()
    if build == "cuda-metal-rules":
        use_metal_rules_for_cuda()
    compile_model(CompileRequest(model=str(hf), target=target, quant=quant, output=str(out), force=True))


def build(root: Path, quant: str, arch: str) -> None:
    root.mkdir(parents=True, exist_ok=True)
    save_tiny_llama(root / "hf")
    for name in BUILDS:  # one process each: the stub driver (or not) is decided at `import tvm`
        subprocess.run([sys.executable, __file__, "_compile", name, str(root / "hf"), str(root / name), quant, arch],
                       check=True)
    ids = np.random.default_rng(1).integers(3, 320, size=PROMPT_LEN).tolist()
    (root / "case.json").write_text(json.dumps({"quant": quant, "arch": arch, "ids": ids}))


def outputs(path: Path, device: str, a: list[int], b: list[int]) -> dict[str, np.ndarray]:
    """Prefill logits of `a` (score), a batch-1 decode step (decode1) and a batch-2 decode step (decode)."""
    import ember

    engine = ember.load(path, device=device, max_batch_size=2)
    out = {"prefill": engine.score(a)}
    runner = engine.runner
    runner.reset()
    runner.add_sequence(0)
    runner.prefill([0], [a[:-1]])
    out["decode1"] = np.asarray(runner.decode([0], [a[-1]]))
    runner.reset()
    runner.add_sequence(0)
    runner.add_sequence(1)
    runner.prefill([0, 1], [a[:-1], b[:-1]])
    out["decode"] = np.asarray(runner.decode([0, 1], [a[-1], b[-1]]))
    return out


def check(root: Path) -> dict:
    case = json.loads((root / "case.json").read_text())
    a, b = case["ids"], case["ids"][::-1][:PROMPT_LEN // 2]
    ref = outputs(root / "cpu", "cpu", a, b)
    report: dict = {"quant": case["quant"], "prompt_len": len(a), "logit_scale": float(np.abs(ref["prefill"]).max())}
    for name in BUILDS[1:]:
        ours = outputs(root / name, "cuda", a, b)
        report[name] = {step: float(np.abs(ours[step] - ref[step]).max()) for step in ref}
        report[name]["top1_agree"] = float((ours["prefill"].argmax(-1) == ref["prefill"].argmax(-1)).mean())
    stock, metal = report["cuda-stock"], report["cuda-metal-rules"]
    # as close to the cpu build as the stock cuda schedules are (both compute in float16 with float32 sums)
    tolerance = {step: 2 * stock[step] + 1e-3 for step in ref}
    report["tolerance"] = tolerance
    report["ok"] = bool(all(metal[step] <= tolerance[step] for step in ref)
                        and metal["top1_agree"] >= min(stock["top1_agree"], 0.95))
    return report


def main() -> int:
    if sys.argv[1:2] == ["_compile"]:
        compile_one(sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]), sys.argv[5], sys.argv[6])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["build", "check"])
    parser.add_argument("dir", type=Path)
    parser.add_argument("--quant", default="q4f16_1")
    parser.add_argument("--arch", default="sm_90")
    args = parser.parse_args()
    if args.command == "build":
        build(args.dir, args.quant, args.arch)
        return 0
    report = check(args.dir)
    print(json.dumps(report, indent=1))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
