"""Reproducible builds (issue 14, part 2): the same model compiled twice, from two working folders into two
output folders, gives byte-identical files (every file's sha256 compared), and the same build fingerprint.
The cuda build needs nvcc only (no GPU); it is skipped where the toolkit is absent."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    root = tmp_path_factory.mktemp("repro")
    LlamaForCausalLM(config).save_pretrained(root / "tiny-hf")
    return root


def compile_in(work: Path, folder: str, output: str, target: str, quant: str) -> Path:
    cwd = work / folder
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "LD_LIBRARY_PATH", "TVM_CUDA_COMPILE_MODE")}
    done = subprocess.run([sys.executable, "-m", "ember.cli", "compile", "--model", "../tiny-hf", "--target", target,
                           "--quant", quant, "-o", output], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return cwd / output


def digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


TARGETS = [("cpu", "q4f16_1"), ("cpu", "q0f32"), ("metal", "q4f16_1"), ("cpu:aarch64", "q4f16_1"),
           pytest.param("cuda:sm_90", "q4f16_1", marks=pytest.mark.skipif(shutil.which("nvcc") is None,
                                                                         reason="needs nvcc (CUDA 13 toolkit)"))]


@pytest.mark.parametrize("target, quant", TARGETS)
def test_two_builds_in_different_folders_are_byte_identical(work, target, quant):
    label = f"{target.replace(':', '-')}-{quant}"
    one = compile_in(work, f"a-{label}", "first", target, quant)
    two = compile_in(work, f"b-{label}", "nested/second", target, quant)
    first, second = digests(one), digests(two)
    print(f"\n{target} {quant}: {len(first)} files")  # the report's reproducibility output (pytest -s)
    for rel in sorted(set(first) | set(second)):
        same = "identical" if first.get(rel) == second.get(rel) else "DIFFERENT"
        print(f"  {rel:40s} {first.get(rel, '-')[:16]}  {second.get(rel, '-')[:16]}  {same}")
    assert first == second
    import json

    manifest = json.loads((one / "manifest.json").read_text())
    build = manifest["build"]
    assert len(build["fingerprint"]) == 64 and build["inputs"]["config.json"] and build["inputs"]["config"]
    assert build["options"]["target"] == target and build["options"]["quant"] == quant
    assert "model.safetensors" in build["inputs"]  # the weights read, by their name in the source folder
    if target.startswith("cuda"):
        assert build["tools"]["nvcc"].startswith("Cuda compilation tools")
