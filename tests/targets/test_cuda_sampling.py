"""The cuda device sampler's build side (no GPU): the kernel header agrees with the runtime's parameter layout,
and cuda builds export `sample` / `sample_reset` (a library of the sampler alone, and a tiny model's artifact)."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ember.runtime.sampler import DEVICE_INFO_FIELDS, DEVICE_PARAM_FIELDS, UPDATE_COUNTS
from ember.targets.cuda.device_code import KERNEL_DIR, needed_sources

HEADER = (KERNEL_DIR / "sample.cuh").read_text()


def _enum(name: str) -> dict[str, int]:
    body = re.search(r"enum " + name + r" : int \{([^}]*)\}", HEADER).group(1)
    return {k.strip(): int(v) for k, v in (item.split("=") for item in body.split(",") if "=" in item)}


def test_header_layout_matches_the_runtime():
    params = _enum("Param")
    names = {"TEMPERATURE": "temperature", "TOP_K": "top_k", "TOP_P": "top_p", "MIN_P": "min_p",
             "REPETITION": "repetition_penalty", "PRESENCE": "presence_penalty", "FREQUENCY": "frequency_penalty",
             "SEED_LO": "seed_lo", "SEED_HI": "seed_hi", "STEP": "step", "SLOT": "slot", "FLAGS": "flags"}
    assert {names[k]: v for k, v in params.items() if k != "PARAMS"} == {n: i for i, n in enumerate(DEVICE_PARAM_FIELDS)}
    assert params["PARAMS"] == len(DEVICE_PARAM_FIELDS)
    assert _enum("Info")["INFO"] == len(DEVICE_INFO_FIELDS)
    assert f"UPDATE_COUNTS = {UPDATE_COUNTS};" in HEADER
    assert needed_sources("ember::sample::run<1024>(") == ["sample.cuh"]


BUILD = """
import json, sys
from ember.targets.cuda.stub_driver import prepare_cuda_compile_process
prepare_cuda_compile_process()
import tvm
from tvm import relax
from ember.targets.cuda.sampling import add_sampler
from ember.targets.cuda.pipeline import build_cuda
mod = add_sampler(tvm.IRModule())
build_cuda(mod, ["sm_90"]).export_library(sys.argv[1])
print(json.dumps(sorted(gv.name_hint for gv, f in mod.functions.items() if isinstance(f, relax.Function))))
"""


def test_sampler_library_builds_for_sm_90(tmp_path: Path):
    lib = tmp_path / "sampler.so"
    out = subprocess.run([sys.executable, "-c", BUILD, str(lib)], check=True, capture_output=True, text=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == ["sample", "sample_reset"]
    assert lib.stat().st_size > 0


def test_tiny_cuda_artifact_exports_the_sampler(tmp_path: Path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=1)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "hf")
    subprocess.run([sys.executable, "-m", "ember.cli", "compile", "--model", str(tmp_path / "hf"), "--quant", "q4f16",
                    "-o", str(tmp_path / "art"), "--target", "cuda:sm_90"], check=True, capture_output=True)
    functions = json.loads((tmp_path / "art" / "manifest.json").read_text())["functions"]
    assert {"decode1", "sample", "sample_reset"} <= set(functions)
