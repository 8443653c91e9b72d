"""`ember verify` of cuda artifacts on a GPU box (the box has no TVM compiler: build here, check there).

Here (nvcc on PATH, no GPU needed):
    python tools/gpu_verify.py build .carry/verify-gpu [--big]
compiles tiny 3-layer Llamas for cuda:sm_90 (q0f16 packed, whole model; q4f16_1 random weights through the 2-layer
truncation path; q0f32 packed) and SmolLM2-135M q4f16_1 with random weights (real shapes, whole model); with --big
also llama3-8b q4f16_1 random weights (the real truncation; ~20 MB). Golden outputs come from cpu builds here.
On the GPU box (runtime-only TVM from tools/make_runtime_subset.py, e.g. .carry/tvm_rt; carry both folders):
    mkdir -p /tmp/pkgs && ln -sfn "$PWD" /tmp/pkgs/ember && PYTHONPATH=/tmp/pkgs:$PWD/.carry/tvm_rt \
    TVM_USE_RUNTIME_LIB=1 python3 tools/gpu_verify.py check .carry/verify-gpu
prints one JSON report per artifact (`ember verify --device cuda --json`) and exits 1 if any failed.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

TINY = dict(num_hidden_layers=3, vocab_size=96, hidden_size=64, intermediate_size=128, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=128)
BUILDS = {  # name: (model, options, force the truncation)
    "tiny-q0f16": ("tiny", {}, False),
    "tiny-q4f16_1-random-truncated": ("tiny", {"quant": "q4f16_1", "random_weights": True}, True),
    "tiny-q0f32": ("tiny", {"quant": "q0f32", "dtype": "float32"}, False),
    "smollm2-q4f16_1-random": ("smollm2-135m", {"quant": "q4f16_1", "random_weights": True}, False),
}
BIG = {"llama3-8b-q4f16_1-random": ("llama3-8b", {"quant": "q4f16_1", "random_weights": True}, False)}


def build(dest: Path, big: bool) -> None:
    from ember.targets.cuda.stub_driver import prepare_cuda_compile_process

    prepare_cuda_compile_process()  # before `import tvm`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "quant"))
    import pytest
    from model_fixtures import random_llama

    from ember import golden
    from ember.compiler import CompileRequest, compile_model
    from ember.progress import console_stage

    dest.mkdir(parents=True, exist_ok=True)
    hf = dest / "hf-tiny"
    if not hf.exists():
        random_llama(seed=3, **TINY).save_pretrained(hf)
    for name, (model, options, truncate) in {**BUILDS, **(BIG if big else {})}.items():
        with pytest.MonkeyPatch.context() as patch, console_stage() as stage:
            if truncate:
                patch.setattr(golden, "WHOLE_MODEL_MAX_PARAMS", 0)
            compile_model(CompileRequest(model=str(hf) if model == "tiny" else model, target="cuda:sm_90",
                                         output=str(dest / name), force=True, **options), stage)
    shutil.rmtree(hf)


def check(dest: Path) -> int:
    from ember.errors import EmberError
    from ember.runtime.verify import verify_artifact

    failed = 0
    for art in sorted(p for p in dest.iterdir() if (p / "manifest.json").is_file()):
        try:
            report = verify_artifact(art, device="cuda")
        except EmberError as err:
            failed += 1
            print(json.dumps({"artifact": str(art), "ok": False, "error": str(err)}), flush=True)
            continue
        failed += not report.ok
        print(json.dumps(report.to_dict()), flush=True)
    maps = open("/proc/self/maps").read()
    print(json.dumps({"runtime_only": "libtvm_compiler" not in maps, "failed": failed}))
    return 1 if failed else 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["build"] and len(sys.argv) >= 3:
        build(Path(sys.argv[2]), "--big" in sys.argv[3:])
    elif sys.argv[1:2] == ["check"] and len(sys.argv) == 3:
        sys.exit(check(Path(sys.argv[2])))
    else:
        sys.exit(__doc__)
