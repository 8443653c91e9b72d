"""The cuda device sampler's build side (no GPU): the kernel header agrees with the runtime's parameter layout,
and cuda builds export `sample` / `sample_reset` (a library of the sampler alone, and a tiny model's artifact)."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ember.runtime.sampler import (DEVICE_EXT_FIELDS, DEVICE_INFO_FIELDS, DEVICE_LOGPROB_COLS, DEVICE_PARAM_FIELDS,
                                   DEVICE_TOP_LOGPROBS, UPDATE_COUNTS)
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
    ext = _enum("ExtParam")
    names = {"MASK": "mask", "BIAS": "bias", "NBIAS": "nbias", "LOGPROBS": "logprobs"}
    assert {names[k]: v - len(DEVICE_PARAM_FIELDS) for k, v in ext.items() if k != "EXT_PARAMS"} == {
        n: i for i, n in enumerate(DEVICE_EXT_FIELDS)}
    assert ext["EXT_PARAMS"] == len(DEVICE_PARAM_FIELDS) + len(DEVICE_EXT_FIELDS)
    assert f"TOP_LOGPROBS = {DEVICE_TOP_LOGPROBS};" in HEADER and DEVICE_LOGPROB_COLS == 1 + 2 * DEVICE_TOP_LOGPROBS
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
    functions = json.loads(out.stdout.strip().splitlines()[-1])
    assert functions == ["sample", "sample_ext", "sample_reset", "sample_restore"]
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
    assert {"decode1", "sample", "sample_reset", "sample_restore", "sample_ext"} <= set(functions)
    # sm_90 only: ember's GEMV, low-batch, norm and attention kernels launch with PDL (targets/cuda/pdl.py); a
    # 1-layer q4f16 model has, per distinct shape, several of them
    from ember.targets.cuda.library_check import inspect_cuda_library

    assert inspect_cuda_library(tmp_path / "art" / "model.so").pdl_kernels >= 8


# -- the split kernel's select and draw, modelled in numpy (split_sampler_model.py) against the host Sampler -------
from split_sampler_model import draw as model_draw  # noqa: E402
from split_sampler_model import fixed_mass, select  # noqa: E402

import numpy as np  # noqa: E402

from ember.runtime.sampler import Sampler, SamplingParams, logits_to_probs  # noqa: E402


def _host_ids(logits: np.ndarray, params: SamplingParams) -> np.ndarray:
    ids, _ = Sampler(params).distribution(logits)
    return np.arange(logits.size) if ids is None else ids


def _model(logits: np.ndarray, params: SamplingParams, split: int) -> dict:
    x = np.divide(logits, np.float32(params.temperature), dtype=np.float32)
    return select(x, params.top_k, params.top_p, params.min_p, split)


def _at_top_p_rounding(logits: np.ndarray, params: SamplingParams, a: np.ndarray, b: np.ndarray) -> bool:
    """Two kept sets that differ only where the nucleus mass of the smaller one is within float32 rounding of p:
    the host sums in float32 (then float64 inside the last slice), the kernel exactly in fixed point."""
    if params.top_p >= 1.0:
        return False
    plain = SamplingParams(temperature=params.temperature, top_k=params.top_k, top_p=params.top_p)
    ids_host = _host_ids(logits, plain)
    model = _model(logits, plain, 32)
    small, large = sorted((ids_host, model["ids"]), key=len)
    if not np.isin(small, large).all():
        return False
    x = np.divide(logits, np.float32(params.temperature), dtype=np.float32)
    cand = np.arange(x.size) if not 0 < params.top_k < x.size else _host_ids(
        logits, SamplingParams(temperature=params.temperature, top_k=params.top_k))
    w = np.exp(x[cand] - x[cand].max()).astype(np.float64)
    total = w.sum()
    mass = np.exp(x[small] - x[cand].max()).astype(np.float64).sum()
    return abs(mass - params.top_p * total) <= 2e-6 * total


def _rows(rng: np.random.Generator, vocab: int, n: int) -> list[np.ndarray]:
    out = []
    for i in range(n):
        x = (rng.standard_normal(vocab) * rng.uniform(0.3, 6.0)).astype(np.float32)
        kind = i % 5
        if kind == 1:  # ties: halves, with -0.0 and +0.0 both present
            x = (np.round(x * 2) / 2).astype(np.float32)
            x[rng.choice(vocab, max(1, vocab // 20), replace=False)] = -0.0
        elif kind == 2:  # masked tokens and a far range
            x[rng.choice(vocab, vocab // 3, replace=False)] = -np.inf
            x[rng.integers(vocab)] = 40.0
        elif kind == 3:  # float16 logits (an fp16 LM head): many exact ties everywhere
            x = x.astype(np.float16).astype(np.float32)
        elif kind == 4:  # tiny values, subnormals
            x = (x * np.float32(1e-38)).astype(np.float32)
        out.append(x)
    return out


def _params(rng: np.random.Generator, i: int, vocab: int) -> SamplingParams:
    kind = i % 6
    return SamplingParams(
        temperature=float(rng.choice([0.3, 0.7, 1.0, 1.6])),
        top_k=int(rng.integers(1, min(vocab, 3000) + 1)) if kind in (0, 3, 5) else (vocab + 5 if kind == 4 else 0),
        top_p=float(rng.uniform(0.05, 0.995)) if kind in (1, 3, 5) else 1.0,
        min_p=float(rng.uniform(0.001, 0.4)) if kind in (2, 5) else 0.0)


@pytest.mark.parametrize("vocab", [37, 1000, 4099, 32000])
def test_split_select_keeps_the_host_samplers_tokens(vocab: int):
    rng = np.random.default_rng(vocab)
    n = 60 if vocab < 10000 else 24
    rounding = 0
    for i, logits in enumerate(_rows(rng, vocab, n)):
        params = _params(rng, i, vocab)
        want = _host_ids(logits, params)
        got = _model(logits, params, 16 if i % 2 else 32)["ids"]
        if not np.array_equal(got, want):
            assert _at_top_p_rounding(logits, params, got, want), (i, params, got.size, want.size)
            rounding += 1
    assert rounding <= max(1, n // 20)


def test_split_select_edge_parameters():
    rng = np.random.default_rng(5)
    x = (rng.standard_normal(5000) * 2).astype(np.float32)
    cases = [SamplingParams(temperature=1.0, top_k=5000), SamplingParams(temperature=1.0, top_k=9999),
             SamplingParams(temperature=1.0, top_k=1), SamplingParams(temperature=1.0, top_p=1.0),
             SamplingParams(temperature=1.0, top_p=1e-9), SamplingParams(temperature=1.0, min_p=1.0),
             SamplingParams(temperature=0.05, top_k=3, top_p=0.99, min_p=0.5),
             SamplingParams(temperature=1.0, top_k=4999, top_p=0.99)]
    for params in cases:
        for split in (16, 32):
            assert np.array_equal(_model(x, params, split)["ids"], _host_ids(x, params)), params
    deep = SamplingParams(temperature=1.0, top_k=4999, top_p=0.999999)  # the cut inside float32's rounding of p
    got, want = _model(x, deep, 32)["ids"], _host_ids(x, deep)
    assert np.array_equal(got, want) or _at_top_p_rounding(x, deep, got, want)
    assert _model(x, SamplingParams(temperature=1.0, top_p=1e-9), 32)["ids"].tolist() == [int(np.argmax(x))]


@pytest.mark.parametrize("split", [16, 32])
def test_split_top_p_ties_are_kept_in_id_order_across_slices(split: int):
    vocab = 4000  # all equal: the cut falls inside one bin of ties spread over every slice
    x = np.zeros(vocab, np.float32)
    x[::7] = -0.0
    for p in (0.3, 0.5, 0.77, 0.999):
        params = SamplingParams(temperature=1.0, top_p=p)
        got = _model(x, params, split)["ids"]
        assert np.array_equal(got, _host_ids(x, params))
        assert np.array_equal(got, np.arange(got.size))  # the lowest ids first
    rng = np.random.default_rng(6)  # a few distinct levels, the cut inside the second one
    x = rng.choice(np.array([2.0, 1.0, 0.0, -1.0], np.float32), vocab, p=[0.01, 0.2, 0.39, 0.4])
    for p in (0.2, 0.45, 0.6, 0.9):
        params = SamplingParams(temperature=1.0, top_p=p)
        assert np.array_equal(_model(x, params, split)["ids"], _host_ids(x, params))


def test_split_top_k_keeps_ties_and_treats_signed_zeros_as_equal():
    x = np.array([0.0, -0.0, 1.0, -0.0, 0.0, -1.0, 2.0] * 300, np.float32)
    for k in (1, 300, 301, 600, 601, 1200, 1500, 2099):
        params = SamplingParams(temperature=1.0, top_k=k)
        assert np.array_equal(_model(x, params, 32)["ids"], _host_ids(x, params)), k


def test_fixed_point_masses_sum_within_the_documented_bound():
    rng = np.random.default_rng(7)
    x = (rng.standard_normal(128256) * 3).astype(np.float32)
    w = np.exp(x - x.max()).astype(np.float32)
    exact = w.astype(np.float64).sum()
    fixed = int(fixed_mass(w).astype(object).sum()) / 2.0**40
    assert abs(fixed - exact) <= w.size * 2.0**-41
    assert abs(fixed - exact) / exact < 6e-8


def test_split_gumbel_draw_follows_the_host_distribution_and_reproduces():
    rng = np.random.default_rng(8)
    logits = (rng.standard_normal(64) * 1.5).astype(np.float32)
    params = SamplingParams(temperature=0.8, top_k=30, top_p=0.9, min_p=0.02)
    probs = logits_to_probs(logits, params).astype(np.float64)
    model = _model(logits, params, 32)
    x = np.divide(logits, np.float32(params.temperature), dtype=np.float32)
    n = 20000
    picks = np.array([model_draw(x, model, seed=11, step=s) for s in range(n)])
    assert np.all(probs[picks] > 0)
    tv = 0.5 * np.abs(np.bincount(picks, minlength=64) / n - probs).sum()
    null = [0.5 * np.abs(rng.multinomial(n, probs / probs.sum()) / n - probs).sum() for _ in range(300)]
    assert tv <= np.quantile(null, 0.999) * 1.1, (tv, np.mean(null))
    again = np.array([model_draw(x, model, seed=11, step=s) for s in range(200)])
    other = np.array([model_draw(x, model, seed=12, step=s) for s in range(200)])
    assert np.array_equal(again, picks[:200]) and not np.array_equal(other, picks[:200])
