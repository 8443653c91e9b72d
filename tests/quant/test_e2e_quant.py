"""Tiny Llama models compiled for cpu with each scheme: logits against transformers.

HF folders: ember's logits equal HF's with the weights ember stores (quantized, then dequantized; tight), and stay
near the float model (loose, per scheme). GGUF files: with no --quant, ember's logits equal transformers loading
the same GGUF (tight), because Q8_0 / Q4_0 / Q4_1 blocks are repacked bit-exactly.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from model_fixtures import VOCAB, hf_logits, load_gguf_model, random_llama, requantized, with_weights, write_gguf

import ember
from ember.compiler import CompileRequest, compile_model
from ember.frontend.importers.gguf import GGUFTensor
from ember.passes import quant_weights
from ember.passes.quant_schemes import SCHEMES, quantize

QUANTIZED = [name for name, s in SCHEMES.items() if s.quantized and not s.format.super_block]  # made from floats
# max |logit error| / std(logits) against the float model: random weights are the hard case for 4 bits
LOOSE = {"q8f16": 0.05, "q4f16": 0.6, "q4f16_1": 0.6, "q4f16g128": 0.8, "q5f16": 0.3, "q5f16_1": 0.3}
EDGES = ("model.embed_tokens.weight", "lm_head.weight")


def prompt(seed: int = 1, n: int = 21) -> list[int]:
    return np.random.default_rng(seed).integers(3, VOCAB, size=n).tolist()


@pytest.fixture(scope="session")
def hf_model():
    return random_llama(seed=0, attention_bias=True)  # biases exercise quant_linear's epilogue


@pytest.fixture(scope="session")
def hf_folder(tmp_path_factory, hf_model):
    folder = tmp_path_factory.mktemp("quant-hf") / "tiny"
    hf_model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session", params=QUANTIZED)
def hf_artifact(request, hf_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("quant-art") / request.param
    path = compile_model(CompileRequest(model=str(hf_folder), target="cpu", quant=request.param, output=str(out)))
    return request.param, path, ember.load(path, device="cpu")


def stored_weights(model, scheme: str):
    """HF model with the values ember computes with: 4-bit schemes keep the embedding and head in q8f16."""
    edge = SCHEMES[scheme].edge_scheme
    return with_weights(model, lambda name, w: requantized(w, edge if name in EDGES else scheme))


def test_logits_equal_hf_with_the_stored_weights(hf_artifact, hf_model):
    scheme, _, engine = hf_artifact
    ids = prompt()
    ours = engine.score(ids)
    np.testing.assert_allclose(ours, hf_logits(stored_weights(hf_model, scheme), ids), rtol=1e-4, atol=3e-5)
    reference = hf_logits(hf_model, ids)
    assert np.abs(ours - reference).max() <= LOOSE[scheme] * reference.std()


def test_greedy_decode_equals_hf_with_the_stored_weights(hf_artifact, hf_model):
    scheme, _, engine = hf_artifact
    ids = prompt(seed=2)
    result = engine.generate(ids, max_tokens=12, temperature=0.0)
    with torch.no_grad():
        ref = stored_weights(hf_model, scheme).generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False,
                                                         eos_token_id=None, pad_token_id=0)[0, len(ids):].tolist()
    assert result.token_ids == ref


def test_manifest_records_scheme_per_tensor(hf_artifact):
    scheme, path, _ = hf_artifact
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["quantization"] == scheme and manifest["compute_dtype"] == "float32"
    by_name = {p["name"]: p for p in manifest["params"]}
    edge = SCHEMES[scheme].edge_scheme
    assert by_name["model.embed_tokens.qweight"]["scheme"] == edge == by_name["lm_head.qweight"]["scheme"]
    assert by_name["model.layers.0.mlp.down_proj.qweight"]["scheme"] == scheme
    fmt = SCHEMES[scheme].format
    assert by_name["model.layers.0.mlp.down_proj.qweight"]["dtype"] == fmt.storage_dtype
    assert by_name["model.layers.0.mlp.down_proj.scales"]["shape"] == [64, -(-96 // fmt.group_size)]
    assert by_name["model.norm.weight"]["dtype"] == "float32" and by_name["model.norm.weight"]["scheme"] is None


# -- GGUF ------------------------------------------------------------------------------------------------------------
def smollm2_like(name: str) -> Q:
    """SmolLM2's Q4_1 file layout (Q8_0 embedding, Q4_1 layers), plus an F16 and a requantized (Q5_0) tensor."""
    if name == "token_embd.weight":
        return Q.Q8_0
    if name == "output.weight":
        return Q.Q5_0
    return Q.F16 if name == "blk.1.ffn_down.weight" else Q.Q4_1


GGUF_CASES = {"F32": (lambda name: Q.F32, "q0f32"), "F16": (lambda name: Q.F16, "q0f32"),
              "Q8_0": (lambda name: Q.Q8_0, "q8f16"), "Q4_0": (lambda name: Q.Q4_0, "q4f16"),
              "smollm2-like": (smollm2_like, "q4f16_1")}


@pytest.fixture(scope="session", params=list(GGUF_CASES))
def gguf_artifact(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"quant-gguf-{request.param}")
    type_of, _ = GGUF_CASES[request.param]
    path = write_gguf(folder / "tiny.gguf", random_llama(seed=3, intermediate_size=128), type_of)
    quantized = []  # weights quantized from float values rather than repacked from GGUF blocks
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(quant_weights, "quantize", lambda w, fmt: quantized.append(w.shape) or quantize(w, fmt))
        dequantized = spy_dequantize(patch)
        artifact = compile_model(CompileRequest(model=str(path), target="cpu", output=str(folder / "art")))
    return request.param, path, artifact, ember.load(artifact, device="cpu"), quantized, dequantized


def spy_dequantize(patch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """(GGUF tensor name, type) of every GGUF tensor dequantized to float values from now on."""
    calls: list[tuple[str, str]] = []
    original = GGUFTensor.dequantize
    patch.setattr(GGUFTensor, "dequantize",
                  lambda self: calls.append((self.gguf_name, self.ggml_type.name)) or original(self))
    return calls


def test_gguf_logits_equal_transformers(gguf_artifact):
    case, path, _, engine, _, _ = gguf_artifact
    oracle = load_gguf_model(path)
    ids = prompt(seed=4)
    np.testing.assert_allclose(engine.score(ids), hf_logits(oracle, ids), rtol=1e-4, atol=3e-5)


def test_gguf_default_scheme_keeps_each_tensor_type(gguf_artifact):
    case, _, artifact, _, quantized, _ = gguf_artifact
    manifest = json.loads((artifact / "manifest.json").read_text())
    default = GGUF_CASES[case][1]
    assert manifest["quantization"] == default
    schemes = {p["name"]: p["scheme"] for p in manifest["params"]}
    if default == "q0f32":  # a float GGUF: float weights, nothing quantized
        assert set(schemes.values()) == {"q0f32"} and quantized == []
        return
    assert schemes["model.norm.weight"] == "q0f32"  # F32 stays F32
    assert schemes["model.layers.0.mlp.gate_up_proj.qweight"] == default
    if case == "smollm2-like":
        assert schemes["model.embed_tokens.qweight"] == "q8f16" and schemes["lm_head.qweight"] == "q5f16"
        assert schemes["model.layers.1.mlp.down_proj.weight"] == "q0f16"
        assert manifest["notes"] == [] and quantized == []  # every Q8_0 / Q4_1 / Q5_0 tensor was repacked
    else:  # an all-Q4_0 file keeps even its embedding and head in Q4_0
        assert schemes["model.embed_tokens.qweight"] == default == schemes["lm_head.qweight"]
        assert manifest["notes"] == [] and quantized == []


def test_gguf_repacked_tensors_are_never_dequantized(gguf_artifact):
    """A default compile repacks Q8_0 / Q4_0 / Q4_1 / Q5_0 blocks without making float values: only float tensors
    are dequantized, each once."""
    case, _, _, _, _, dequantized = gguf_artifact
    expected = {"F32", "F16"} if case == "smollm2-like" else {"F32"} | ({case} & {"F16"})
    assert {t for _, t in dequantized} == expected
    assert len(dequantized) == len(set(dequantized))


def test_gguf_q0f32_weights_are_exactly_gguf_dequantized(tmp_path, monkeypatch):
    """--quant q0f32 of a Q4_1 / Q8_0 file stores exactly gguf-py's dequantized values (in HF layout, fused)."""
    from safetensors.numpy import load_file

    path = write_gguf(tmp_path / "tiny.gguf", random_llama(seed=3, num_hidden_layers=1), smollm2_like)
    dequantized = spy_dequantize(monkeypatch)
    artifact = compile_model(CompileRequest(model=str(path), target="cpu", quant="q0f32", output=str(tmp_path / "a")))
    oracle = {k: v.numpy() for k, v in load_gguf_model(path).state_dict().items()}  # gguf-py's dequantize
    manifest = json.loads((artifact / "manifest.json").read_text())
    stored = {}
    for file in {p["file"] for p in manifest["params"]}:
        stored.update(load_file(str(artifact / file)))
    fused = {"self_attn.qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
             "mlp.gate_up_proj": ("mlp.gate_proj", "mlp.up_proj")}
    for name, value in stored.items():
        prefix, _, part = name.rpartition(".layers.0.")
        parts = next((v for k, v in fused.items() if part.startswith(k + ".")), None)
        if parts is None:
            expected = oracle[name]
        else:
            suffix = part.rpartition(".")[2]
            expected = np.concatenate([oracle[f"{prefix}.layers.0.{p}.{suffix}"] for p in parts])
        assert value.dtype == np.float32
        np.testing.assert_array_equal(value, expected, err_msg=name)
    assert {t for _, t in dequantized} >= {"Q4_1", "Q8_0"}


def q4_k_m_like(name: str) -> Q:
    """A Q4_K_M file's types (llama.cpp's mix: Q6_K head, v and down in Q6_K in some layers) plus the other kept
    types: a Q5_K down projection, a Q5_0 and a Q5_1 projection, Q2_K and Q3_K ones."""
    if name == "output.weight" or name in ("blk.0.attn_v.weight", "blk.0.ffn_down.weight"):
        return Q.Q6_K
    return {"blk.1.ffn_down.weight": Q.Q5_K, "blk.1.attn_output.weight": Q.Q5_0,
            "blk.1.ffn_up.weight": Q.Q5_1, "blk.0.attn_output.weight": Q.Q3_K, "blk.0.ffn_gate.weight": Q.Q2_K,
            "blk.0.ffn_up.weight": Q.Q3_K}.get(name, Q.Q4_K)


@pytest.fixture(scope="module")
def kquant_gguf(tmp_path_factory):
    folder = tmp_path_factory.mktemp("quant-gguf-kquant")
    model = random_llama(seed=5, hidden_size=256, intermediate_size=512, head_dim=64)
    path = write_gguf(folder / "tiny-q4_k_m.gguf", model, q4_k_m_like)
    quantized = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(quant_weights, "quantize", lambda w, fmt: quantized.append(w.shape) or quantize(w, fmt))
        dequantized = spy_dequantize(patch)
        artifact = compile_model(CompileRequest(model=str(path), target="cpu", output=str(folder / "art")))
    return path, artifact, quantized, dequantized


def test_kquant_gguf_logits_equal_transformers(kquant_gguf):
    """Q2_K .. Q6_K / Q5_0 / Q5_1 tensors kept native: prompt logits equal transformers on the same file
    (within 1e-4 of the logit scale), greedy top-1 identical, and the decode steps too."""
    path, artifact, quantized, dequantized = kquant_gguf
    engine = ember.load(artifact, device="cpu")
    oracle = load_gguf_model(path)
    ids = prompt(seed=6)
    ours, theirs = engine.score(ids), hf_logits(oracle, ids)
    scale = float(np.abs(theirs).max())
    assert float(np.abs(ours - theirs).max()) <= 1e-4 * scale
    assert (ours.argmax(-1) == theirs.argmax(-1)).all()
    with torch.no_grad():
        expected = oracle.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False, eos_token_id=None,
                                   pad_token_id=0)[0, len(ids):].tolist()
    assert engine.generate(ids, max_tokens=8, temperature=0.0).token_ids == expected
    assert quantized == [] and {t for _, t in dequantized} == {"F32"}  # every quantized tensor repacked


def test_kquant_gguf_keeps_each_tensor_type(kquant_gguf):
    _, artifact, _, _ = kquant_gguf
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert manifest["quantization"] == "q4_k"  # the dominant type
    schemes = {p["name"]: p["scheme"] for p in manifest["params"]}
    assert schemes["lm_head.qweight"] == "q6_k" and schemes["model.embed_tokens.qweight"] == "q4_k"
    assert schemes["model.layers.0.self_attn.v_proj.qweight"] == "q6_k"  # not fused with Q4_K q/k
    assert schemes["model.layers.1.self_attn.qkv_proj.qweight"] == "q4_k"  # all Q4_K: fused
    assert schemes["model.layers.1.mlp.down_proj.qhigh"] == "q5_k"
    assert schemes["model.layers.1.self_attn.o_proj.qhigh"] == "q5f16"
    assert schemes["model.layers.1.mlp.up_proj.mins"] == "q5f16_1"  # not fused with the Q4_K gate
    assert schemes["model.layers.0.self_attn.o_proj.qhigh"] == "q3_k"
    assert schemes["model.layers.0.mlp.gate_proj.super_mins"] == "q2_k"  # not fused with the Q3_K up
    assert schemes["model.layers.0.mlp.up_proj.qhigh"] == "q3_k"
    assert manifest["notes"] == []
