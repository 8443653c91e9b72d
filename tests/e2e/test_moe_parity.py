"""Tiny random mixture-of-experts models (Mixtral, Qwen3-MoE) compiled for cpu: logits within 2e-5 of transformers
(f32) and 32 greedy tokens equal to HF `generate`, from the HF folder (per-expert checkpoint tensors) and from a GGUF
of the same weights written with gguf-py's writer (stacked ffn_*_exps, as llama.cpp writes them); each quantized
scheme equals transformers running the weights ember stores (quantized experts, float router)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

import ember
from ember.compiler import CompileRequest, compile_model
from ember.passes.quant_schemes import SCHEMES, dequantize, quantize


@dataclass(frozen=True)
class Case:
    family: str
    kwargs: tuple
    prompt_len: int = 21

    @property
    def config(self):
        from transformers import MixtralConfig, Qwen3MoeConfig

        cls = {"mixtral": MixtralConfig, "qwen3_moe": Qwen3MoeConfig}[self.family]
        return cls(**{"eos_token_id": None, **{k: list(v) if isinstance(v, tuple) else v for k, v in self.kwargs}})


# vocab 150: no projection has as many rows (Quantize takes a linear of vocab_size rows for the LM head)
BASE = (("vocab_size", 150), ("hidden_size", 64), ("num_attention_heads", 4), ("num_key_value_heads", 2))
CASES = {
    # 4 experts, top 2 (softmax over the top-2 logits), GQA 4:2, untied head
    "mixtral-4x2": Case("mixtral", BASE + (("intermediate_size", 96), ("num_hidden_layers", 2),
                                           ("num_local_experts", 4), ("num_experts_per_tok", 2))),
    # 8 experts, top 3 renormalized, head_dim 32 != hidden / heads, layer 1 dense (mlp_only_layers), tied
    "qwen3moe-norm-dense": Case("qwen3_moe", BASE + (
        ("intermediate_size", 96), ("moe_intermediate_size", 32), ("num_hidden_layers", 3), ("head_dim", 32),
        ("num_experts", 8), ("num_experts_per_tok", 3), ("norm_topk_prob", True), ("mlp_only_layers", (1,)),
        ("tie_word_embeddings", True))),
    # top 2 of 6 without renormalization, every second layer sparse (decoder_sparse_step 2)
    "qwen3moe-raw-step2": Case("qwen3_moe", BASE + (
        ("intermediate_size", 64), ("moe_intermediate_size", 64), ("num_hidden_layers", 4), ("num_experts", 6),
        ("num_experts_per_tok", 2), ("norm_topk_prob", False), ("decoder_sparse_step", 2))),
}


def random_model(case: Case):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_config(case.config, attn_implementation="eager").eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith("norm.weight"):  # away from 1, so a norm left out or applied twice shows
                p.uniform_(0.5, 1.5)
            if name.endswith("mlp.gate.weight"):  # routers spread wide: routing decisions that differ show
                p.normal_(0, 0.5)
    return hf


@pytest.fixture(scope="module", params=sorted(CASES))
def compiled(request, tmp_path_factory):
    case = CASES[request.param]
    hf = random_model(case)
    folder = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(folder / "hf")
    artifact = compile_model(CompileRequest(model=str(folder / "hf"), target="cpu", output=str(folder / "art")))
    return case, hf, folder, ember.load(artifact, device="cpu")


def prompt(case: Case, seed: int = 1) -> list[int]:
    return np.random.default_rng(seed).integers(0, case.config.vocab_size, size=case.prompt_len).tolist()


def hf_logits(hf, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return hf(torch.tensor([ids])).logits[0].numpy()


def hf_greedy(hf, ids: list[int], n: int = 32) -> list[int]:
    with torch.no_grad():
        return hf.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, eos_token_id=None,
                           pad_token_id=0)[0, len(ids):].tolist()


def test_checkpoint_names_are_per_expert_and_the_ir_stacks_them(compiled):
    case, hf, folder, engine = compiled
    from safetensors import safe_open

    with safe_open(str(folder / "hf" / "model.safetensors"), "np") as f:
        names = set(f.keys())
    expert = "block_sparse_moe.experts.0.w1.weight" if case.family == "mixtral" else "mlp.experts.0.gate_proj.weight"
    assert any(n.endswith(expert) for n in names)
    ir = (engine.artifact.path / "ir.txt").read_text()
    assert "= moe(" in ir and not any(".experts.0." in p.name for p in engine.manifest.params)


def test_score_matches_hf_logits(compiled):
    case, hf, _, engine = compiled
    ids = prompt(case)
    ours, ref = engine.score(ids), hf_logits(hf, ids)
    assert ours.shape == ref.shape and ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, atol=2e-5, rtol=1e-4)


def test_greedy_tokens_match_hf_generate(compiled):
    case, hf, _, engine = compiled
    ids = prompt(case, seed=2)
    assert engine.generate(ids, max_tokens=32, temperature=0.0).token_ids == hf_greedy(hf, ids)


def test_chunked_prefill_matches(compiled):
    """Prefill in 5-token chunks (the experts run on 5 tokens at a time, then on 1) gives the same logits."""
    case, hf, _, engine = compiled
    chunked = ember.load(engine.artifact.path, device="cpu", prefill_chunk_size=5)
    ids = prompt(case, seed=3)
    np.testing.assert_allclose(chunked.score(ids), hf_logits(hf, ids), atol=2e-5, rtol=1e-4)


# -- GGUF ------------------------------------------------------------------------------------------------------------
def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(path: Path, case: Case, hf, blocks: dict[str, tuple[np.ndarray, gguf.GGMLQuantizationType]] | None = None
               ) -> Path:
    """As llama.cpp's converter writes these models: Mixtral as "llama" with expert_count (q/k rows permuted),
    Qwen3-MoE as "qwen3moe" with expert_feed_forward_length; experts stacked into ffn_{gate,up,down}_exps.
    `blocks`: GGUF tensor name -> (quantized blocks, type) written instead of the float values."""
    config = case.config
    mixtral = case.family == "mixtral"
    arch = "llama" if mixtral else "qwen3moe"
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA if mixtral else gguf.MODEL_ARCH.QWEN3MOE,
                                     config.num_hidden_layers)
    writer = gguf.GGUFWriter(str(path), arch)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    meta = {"block_count": config.num_hidden_layers, "context_length": config.max_position_embeddings,
            "embedding_length": config.hidden_size, "feed_forward_length": config.intermediate_size,
            "attention.head_count": config.num_attention_heads,
            "attention.head_count_kv": config.num_key_value_heads,
            "attention.key_length": head_dim, "attention.value_length": head_dim,
            "attention.layer_norm_rms_epsilon": float(config.rms_norm_eps),
            "rope.freq_base": float(config.rope_parameters["rope_theta"]), "vocab_size": config.vocab_size,
            "expert_count": config.num_local_experts, "expert_used_count": config.num_experts_per_tok}
    if not mixtral:
        meta["expert_feed_forward_length"] = config.moe_intermediate_size
    for key, value in meta.items():
        (writer.add_float32 if isinstance(value, float) else writer.add_uint32)(f"{arch}.{key}", value)
    if not mixtral:
        writer.add_bool(f"{arch}.expert_weights_norm", bool(config.norm_topk_prob))
    tokens = ["<unk>", "<s>", "</s>"] + [f"\u2581w{i}" for i in range(config.vocab_size - 3)]
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * len(tokens))
    writer.add_token_types([2, 3, 3] + [1] * (len(tokens) - 3))
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    state = hf.state_dict()
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    for hf_name, tensor in state.items():
        w = tensor.float().numpy()
        if hf_name.endswith("experts.gate_up_proj"):  # transformers 5 holds gate | up of each expert as one tensor
            block = hf_name.split(".")[2]
            inter = w.shape[1] // 2
            _add(writer, f"blk.{block}.ffn_gate_exps.weight", w[:, :inter], blocks)
            _add(writer, f"blk.{block}.ffn_up_exps.weight", w[:, inter:], blocks)
            continue
        if hf_name.endswith("experts.down_proj"):
            _add(writer, f"blk.{hf_name.split('.')[2]}.ffn_down_exps.weight", w, blocks)
            continue
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        assert gguf_name is not None, hf_name
        if mixtral and (".attn_q." in gguf_name or ".attn_k." in gguf_name):
            w = _permute(w, config.num_attention_heads if ".attn_q." in gguf_name else config.num_key_value_heads)
        writer.add_tensor(gguf_name, np.ascontiguousarray(w))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _add(writer, name: str, w: np.ndarray, blocks) -> None:
    if blocks and name in blocks:
        raw, qtype = blocks[name]
        writer.add_tensor(name, raw, raw_dtype=qtype)
    else:
        writer.add_tensor(name, np.ascontiguousarray(w))


def test_a_gguf_of_the_same_weights_compiles_and_matches_hf(compiled, tmp_path):
    case, hf, _, engine = compiled
    if case.config.__dict__.get("mlp_only_layers") or getattr(case.config, "decoder_sparse_step", 1) != 1:
        pytest.skip("llama.cpp's qwen3moe has experts on every layer")
    path = write_gguf(tmp_path / f"{case.family}.gguf", case, hf)
    artifact = compile_model(CompileRequest(model=str(path), target="cpu", output=str(tmp_path / "art")))
    from_gguf = ember.load(artifact, device="cpu")
    assert from_gguf.manifest.config["model_type"] == case.family
    ids = prompt(case)
    np.testing.assert_allclose(from_gguf.score(ids), hf_logits(hf, ids), atol=2e-5, rtol=1e-4)


# -- quantized schemes -----------------------------------------------------------------------------------------------
def stored(hf, scheme: str):
    """A copy of `hf` with the values ember computes with: experts and attention in `scheme`, the router float, the
    embedding and head in the scheme's edge scheme."""
    import copy

    clone = copy.deepcopy(hf)
    edge = SCHEMES[scheme].edge_scheme

    def requantize(w: np.ndarray, name: str) -> np.ndarray:
        fmt = SCHEMES[name].format
        flat = w.reshape(-1, w.shape[-1])
        return dequantize(quantize(flat, fmt), fmt, flat.shape[1]).reshape(w.shape)

    with torch.no_grad():
        for name, p in clone.named_parameters():
            if p.ndim < 2 or name.endswith("mlp.gate.weight"):
                continue
            w = p.numpy()
            if name.endswith("experts.gate_up_proj"):  # gate and up are separate weights in ember: same rows anyway
                new = requantize(w, scheme)
            else:
                new = requantize(w, edge if "embed_tokens" in name or "lm_head" in name else scheme)
            p.copy_(torch.from_numpy(np.asarray(new, dtype=np.float32)))
    return clone


QUANT_CASES = [("qwen3moe-norm-dense", s) for s in ("q4f16", "q8f16", "q4f16_1", "q4f16g128")] + \
              [("mixtral-4x2", "q4f16_1")]


@pytest.mark.parametrize("name,scheme", QUANT_CASES)
def test_quantized_experts_equal_hf_with_the_stored_weights(name, scheme, tmp_path):
    case = CASES[name]
    hf = random_model(case)
    hf.save_pretrained(tmp_path / "hf")
    artifact = compile_model(CompileRequest(model=str(tmp_path / "hf"), target="cpu", quant=scheme,
                                            output=str(tmp_path / "art")))
    engine = ember.load(artifact, device="cpu")
    reference = stored(hf, scheme)
    ids = prompt(case)
    np.testing.assert_allclose(engine.score(ids), hf_logits(reference, ids), atol=3e-5, rtol=1e-4)
    ids = prompt(case, seed=2)
    assert engine.generate(ids, max_tokens=32, temperature=0.0).token_ids == hf_greedy(reference, ids)
    params = {p.name: p for p in engine.manifest.params}
    routers = [p for n, p in params.items() if n.endswith((".mlp.gate.weight", ".block_sparse_moe.gate.weight"))]
    assert routers and all(p.dtype == "float32" and p.scheme is None for p in routers)  # the router stays float
    down = [p for n, p in params.items() if n.endswith(("experts.down_proj.qweight", "experts.w2.qweight"))]
    assert down and all(p.scheme == scheme and len(p.shape) == 3 for p in down)


# -- GGUF experts kept native ----------------------------------------------------------------------------------------
# K-quants need rows of 256 values: hidden and the experts' width 256
KQUANT_CASE = Case("mixtral", (("vocab_size", 150), ("hidden_size", 256), ("num_attention_heads", 4),
                               ("num_key_value_heads", 2), ("intermediate_size", 256), ("num_hidden_layers", 2),
                               ("num_local_experts", 4), ("num_experts_per_tok", 2)), prompt_len=13)
# layer 0 as a Q4_K_M file holds it (Q4_K gate/up, Q6_K down: one format per weight), layer 1 one K-quant for all
EXPERT_TYPES = {0: ("Q4_K", "Q4_K", "Q6_K"), 1: ("Q5_K", "Q5_K", "Q5_K")}


def test_gguf_k_quant_experts_are_kept_native_and_match_hf_on_gguf_dequantized_weights(tmp_path):
    """A Mixtral GGUF whose ffn_*_exps are K-quant blocks compiles with no --quant, keeps each expert weight's own
    type (no requantization) and its logits and greedy tokens equal transformers running gguf's dequantized
    experts."""
    from gguf import GGMLQuantizationType as Q

    from tests.quant.model_fixtures import random_kquant_blocks

    case = KQUANT_CASE
    hf = random_model(case)
    config = case.config
    experts, inter, hidden = config.num_local_experts, config.intermediate_size, config.hidden_size
    blocks = {}
    with torch.no_grad():
        for layer, types in EXPERT_TYPES.items():
            values = []
            for which, ggml_type, (rows, cols) in zip(("gate", "up", "down"), types,
                                                      ((inter, hidden), (inter, hidden), (hidden, inter))):
                raw = random_kquant_blocks((experts * rows, cols), Q[ggml_type], seed=17 * layer + len(values))
                blocks[f"blk.{layer}.ffn_{which}_exps.weight"] = (raw.reshape(experts, rows, -1), Q[ggml_type])
                values.append(gguf.quants.dequantize(raw, Q[ggml_type]).reshape(experts, rows, cols))
            moe = hf.model.layers[layer].mlp.experts
            moe.gate_up_proj.copy_(torch.from_numpy(np.concatenate(values[:2], axis=1)))
            moe.down_proj.copy_(torch.from_numpy(values[2]))
    path = write_gguf(tmp_path / "kquant-experts.gguf", case, hf, blocks)
    artifact = compile_model(CompileRequest(model=str(path), target="cpu", output=str(tmp_path / "art")))
    engine = ember.load(artifact, device="cpu")
    schemes = {p.name: p.scheme for p in engine.manifest.params if p.name.endswith("qweight") and "expert" in p.name}
    assert schemes == {f"model.layers.{layer}.block_sparse_moe.experts.{w}.qweight": t.lower()
                       for layer, types in EXPERT_TYPES.items() for w, t in zip(("w1", "w3", "w2"), types)}
    assert not [n for n in engine.manifest.notes if "requantized" in n]
    ids = prompt(case)
    reference = hf_logits(hf, ids)
    np.testing.assert_allclose(engine.score(ids), reference, atol=1e-4 * np.abs(reference).max(), rtol=0)
    ids = prompt(case, seed=2)
    assert engine.generate(ids, max_tokens=32, temperature=0.0).token_ids == hf_greedy(hf, ids)
