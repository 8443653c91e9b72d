"""Tiny random Hugging Face models of each family, compiled for cpu: logits and greedy tokens match HF, from the HF
folder and from a GGUF of the same weights written with gguf-py's writer (named and laid out as llama.cpp does)."""
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

import ember
from ember.compiler import CompileRequest, compile_model

LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16}


PHI3 = (("vocab_size", 150), ("hidden_size", 64), ("intermediate_size", 96), ("num_hidden_layers", 2),
        ("pad_token_id", None), ("bos_token_id", None))


def longrope(n):
    """Factor lists of n entries, short near 1 and long growing, as in Phi-3's configs (not those values)."""
    return {"type": "longrope", "short_factor": [1.0 + 0.05 * i for i in range(n)],
            "long_factor": [1.0 + 0.9 * i for i in range(n)]}


@dataclass(frozen=True)
class Case:
    family: str
    kwargs: tuple
    prompt_len: int = 21

    @property
    def config(self):
        from transformers import (Gemma2Config, Gemma3TextConfig, LlamaConfig, MistralConfig, Phi3Config,
                                  Qwen2Config, Qwen3Config)

        cls = {"llama": LlamaConfig, "mistral": MistralConfig, "qwen2": Qwen2Config, "qwen3": Qwen3Config,
               "phi3": Phi3Config, "gemma2": Gemma2Config, "gemma3_text": Gemma3TextConfig}[self.family]
        kwargs = {k: list(v) if isinstance(v, tuple) else v for k, v in self.kwargs}
        return cls(**{"eos_token_id": None, **kwargs})  # greedy runs the full 32 tokens


CASES = {
    # GQA 4:2, head_dim 16, llama3 rope scaling, untied head
    "llama-gqa-llama3rope": Case("llama", (("vocab_size", 128), ("hidden_size", 64), ("intermediate_size", 96),
                                           ("num_hidden_layers", 2), ("num_attention_heads", 4),
                                           ("num_key_value_heads", 2), ("rope_parameters",
                                                                        {"rope_theta": 10000.0, **LLAMA3_ROPE}))),
    # MHA, head_dim 32, tied embeddings, attention bias, odd vocab
    "llama-tied-bias": Case("llama", (("vocab_size", 301), ("hidden_size", 64), ("intermediate_size", 128),
                                      ("num_hidden_layers", 2), ("num_attention_heads", 2),
                                      ("num_key_value_heads", 2), ("tie_word_embeddings", True),
                                      ("attention_bias", True), ("rms_norm_eps", 1e-5))),
    # sliding window of 8 tokens, prompt 3x longer; GQA 4:1
    "mistral-window": Case("mistral", (("vocab_size", 160), ("hidden_size", 64), ("intermediate_size", 128),
                                       ("num_hidden_layers", 2), ("num_attention_heads", 4),
                                       ("num_key_value_heads", 1), ("sliding_window", 8)), prompt_len=27),
    # qkv bias, tied embeddings, head_dim 8
    "qwen2-tied": Case("qwen2", (("vocab_size", 200), ("hidden_size", 64), ("intermediate_size", 128),
                                 ("num_hidden_layers", 2), ("num_attention_heads", 8), ("num_key_value_heads", 2),
                                 ("tie_word_embeddings", True))),
    # q/k RMSNorm per head, head_dim 32 != hidden / heads, GQA 4:2, untied head
    "qwen3-qknorm": Case("qwen3", (("vocab_size", 160), ("hidden_size", 64), ("intermediate_size", 128),
                                   ("num_hidden_layers", 2), ("num_attention_heads", 4), ("num_key_value_heads", 2),
                                   ("head_dim", 32), ("rms_norm_eps", 1e-6))),
    # YaRN (Qwen3's long-context configs): frequencies blended by a ramp, cos/sin times 0.1 ln(4) + 1
    "qwen3-yarn": Case("qwen3", (("vocab_size", 160), ("hidden_size", 64), ("intermediate_size", 128),
                                 ("num_hidden_layers", 2), ("num_attention_heads", 2), ("num_key_value_heads", 1),
                                 ("head_dim", 64), ("max_position_embeddings", 256),
                                 ("rope_parameters", {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                                                      "original_max_position_embeddings": 64}))),
    # fused qkv_proj and gate_up_proj, GQA 4:2, full rotary, untied head
    "phi3-plain": Case("phi3", PHI3 + (("num_attention_heads", 4), ("num_key_value_heads", 2))),
    # Phi-4-mini's shape in small: partial rotary 0.75 (12 of 16 dims), GQA 4:1, tied embeddings
    "phi3-partial-tied": Case("phi3", PHI3 + (("num_attention_heads", 4), ("num_key_value_heads", 1),
                                              ("partial_rotary_factor", 0.75), ("tie_word_embeddings", True))),
    # LongRoPE with partial rotary, all 21 + 32 positions within original_max_position_embeddings 64: short
    # factors, cos/sin times sqrt(1 + ln(256 / 64) / ln(64))
    "phi3-longrope-short": Case("phi3", PHI3 + (("num_attention_heads", 2), ("num_key_value_heads", 1),
                                                ("partial_rotary_factor", 0.5), ("max_position_embeddings", 256),
                                                ("original_max_position_embeddings", 64),
                                                ("rope_scaling", longrope(8)))),
    # LongRoPE past original_max_position_embeddings 16: the 21-token prompt and every generated token use the
    # long factors (transformers' rule: the forward call's largest position + 1 > 16)
    "phi3-longrope-long": Case("phi3", PHI3 + (("num_attention_heads", 2), ("num_key_value_heads", 1),
                                               ("partial_rotary_factor", 0.5), ("max_position_embeddings", 128),
                                               ("original_max_position_embeddings", 16),
                                               ("rope_scaling", longrope(8)))),
    # local layers (a 6-token window, rope base 1e4) and global ones (base 1e6, linear scaling x2), q/k norms,
    # (1 + w) norms, sqrt(hidden) embeddings, GeGLU; query_pre_attn_scalar = head_dim, as GGUF files assume
    "gemma3-local-global": Case("gemma3_text", (
        ("vocab_size", 256), ("hidden_size", 64), ("intermediate_size", 96), ("num_hidden_layers", 6),
        ("num_attention_heads", 4), ("num_key_value_heads", 2), ("head_dim", 32), ("query_pre_attn_scalar", 32),
        ("sliding_window", 6), ("layer_types", ("sliding_attention", "sliding_attention", "full_attention") * 2),
        ("rope_parameters", {"full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e6},
                             "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}))),
    # alternating local (5-token window) and global layers, attention and final soft-capping tight enough to bend
    # the scores (larger weights), MQA, head_dim 64 > hidden / heads
    "gemma2-softcap": Case("gemma2", (
        ("vocab_size", 256), ("hidden_size", 64), ("intermediate_size", 96), ("num_hidden_layers", 4),
        ("num_attention_heads", 2), ("num_key_value_heads", 1), ("head_dim", 64), ("query_pre_attn_scalar", 64),
        ("sliding_window", 5), ("attn_logit_softcapping", 1.0), ("final_logit_softcapping", 3.0),
        ("initializer_range", 0.1))),
}


@pytest.fixture(scope="session", params=sorted(CASES))
def compiled(request, tmp_path_factory):
    from transformers import AutoModelForCausalLM

    case = CASES[request.param]
    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_config(case.config, attn_implementation="eager").eval()
    with torch.no_grad():  # random biases, so the bias path is really exercised
        for name, p in hf.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0, 0.5)
    with torch.no_grad():  # norm weights away from 1, so a norm left out or applied twice shows
        for name, p in hf.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    folder = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(folder / "hf")
    artifact = compile_model(CompileRequest(model=str(folder / "hf"), target="cpu", output=str(folder / "art")))
    return case, hf, ember.load(artifact, device="cpu")


def prompt(case, seed=1):
    return np.random.default_rng(seed).integers(0, case.config.vocab_size, size=case.prompt_len).tolist()


def test_score_matches_hf_logits(compiled):
    case, hf, engine = compiled
    ids = prompt(case)
    ours = engine.score(ids)
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits[0].numpy()
    assert ours.shape == ref.shape and ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, atol=2e-5, rtol=1e-4)


def test_greedy_tokens_match_hf_generate(compiled):
    case, hf, engine = compiled
    ids = prompt(case, seed=2)
    result = engine.generate(ids, max_tokens=32, temperature=0.0)
    with torch.no_grad():
        ref = hf.generate(torch.tensor([ids]), max_new_tokens=32, do_sample=False, eos_token_id=None,
                          pad_token_id=0)[0, len(ids):].tolist()
    assert result.token_ids == ref


def test_a_sliding_window_is_exact_in_chunks_of_any_length(compiled):
    """The window is a mask in the attention kernels (the cache keeps every token): a prompt 3x the window, prefilled
    in 5-token chunks (each after the first attends to cached pages under the window), gives HF's logits."""
    case, hf, engine = compiled
    if dict(case.kwargs).get("sliding_window") is None:
        pytest.skip("no sliding window")
    assert engine.manifest.kv_cache.window_in_kernels and not engine.runner.kv.evicts
    kinds = getattr(case.config, "layer_types", None) or []
    local = [i for i, kind in enumerate(kinds) if kind == "sliding_attention"]
    assert engine.manifest.kv_cache.window_layers == (local if 0 < len(local) < len(kinds) else None)
    chunked = ember.load(engine.artifact.path, device="cpu", prefill_chunk_size=5)
    ids = prompt(case, seed=3)
    assert chunked.runner.prefill_chunk_size == 5
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits[0].numpy()
    np.testing.assert_allclose(chunked.score(ids), ref, atol=2e-5, rtol=1e-4)


GGUF_ARCH = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3",  # llama.cpp's converter
             "phi3": "phi3", "gemma2": "gemma2", "gemma3_text": "gemma3"}


def write_gguf(path: Path, family: str, config, hf_model) -> Path:
    """The HF weights (f32) as llama.cpp's converter writes them: gguf-py's names, q/k rows permuted for llama,
    1 + w for Gemma's norm weights, Gemma's soft-caps, window, layer pattern and local rope base."""
    arch = GGUF_ARCH[family]
    names = gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, arch.upper()), config.num_hidden_layers)
    writer = gguf.GGUFWriter(str(path), arch)
    rope = config.rope_parameters
    gemma = arch.startswith("gemma")
    if "full_attention" in rope:  # Gemma 3 (transformers 5): a rope per layer type
        rope, local_rope = rope["full_attention"], rope["sliding_attention"]
        writer.add_rope_freq_base_swa(float(local_rope["rope_theta"]))
    if gemma:
        writer.add_sliding_window(config.sliding_window)
        writer.add_sliding_window_pattern([kind == "sliding_attention" for kind in config.layer_types])
        for key in ("attn_logit_softcapping", "final_logit_softcapping"):
            if getattr(config, key, None):
                writer.add_float32(f"{arch}.{key}", float(getattr(config, key)))
    if rope.get("rope_type") == "linear":
        writer.add_string(f"{arch}.rope.scaling.type", "linear")
        writer.add_float32(f"{arch}.rope.scaling.factor", float(rope["factor"]))
    if rope.get("rope_type") == "yarn":  # as llama.cpp's converter writes Qwen3's long-context configs
        writer.add_string(f"{arch}.rope.scaling.type", "yarn")
        writer.add_float32(f"{arch}.rope.scaling.factor", float(rope["factor"]))
        writer.add_uint32(f"{arch}.rope.scaling.original_context_length", rope["original_max_position_embeddings"])
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    meta = {"block_count": config.num_hidden_layers, "context_length": config.max_position_embeddings,
            "embedding_length": config.hidden_size, "feed_forward_length": config.intermediate_size,
            "attention.head_count": config.num_attention_heads,
            "attention.head_count_kv": config.num_key_value_heads,
            "attention.key_length": head_dim, "attention.value_length": head_dim,
            "attention.layer_norm_rms_epsilon": float(config.rms_norm_eps),
            "rope.freq_base": float(rope["rope_theta"]), "vocab_size": config.vocab_size}
    if getattr(config, "sliding_window", None) and family == "mistral":
        meta["attention.sliding_window"] = config.sliding_window
    if family == "phi3":  # partial rotary as the rotated dims; the context the model was pretrained with
        meta["rope.dimension_count"] = int(head_dim * rope.get("partial_rotary_factor", 1.0))
        meta["rope.scaling.original_context_length"] = config.original_max_position_embeddings
        meta["attention.sliding_window"] = config.sliding_window or 0  # 0: none (llama.cpp's Phi-4 convention)
    for key, value in meta.items():
        (writer.add_float32 if isinstance(value, float) else writer.add_uint32)(f"{arch}.{key}", value)
    tokens = ["<unk>", "<s>", "</s>"] + [f"\u2581w{i}" for i in range(config.vocab_size - 3)]
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * len(tokens))
    writer.add_token_types([2, 3, 3] + [1] * (len(tokens) - 3))
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    if rope.get("rope_type") == "llama3":  # llama.cpp keeps llama3 scaling only as per-frequency factors
        writer.add_uint32(f"{arch}.rope.scaling.original_context_length", rope["original_max_position_embeddings"])
        from ember.frontend.importers.gguf import _llama3_rope_factors

        factors = _llama3_rope_factors(rope["rope_theta"], head_dim, rope["factor"], rope["low_freq_factor"],
                                       rope["high_freq_factor"], rope["original_max_position_embeddings"])
        writer.add_tensor("rope_freqs.weight", factors.astype(np.float32))
    if rope.get("rope_type") == "longrope":  # llama.cpp: both factor lists as tensors, the cos/sin multiplier
        import math

        scale = config.max_position_embeddings / config.original_max_position_embeddings
        writer.add_float32(f"{arch}.rope.scaling.attn_factor",
                           math.sqrt(1 + math.log(scale) / math.log(config.original_max_position_embeddings)))
        writer.add_tensor("rope_factors_long.weight", np.asarray(rope["long_factor"], dtype=np.float32))
        writer.add_tensor("rope_factors_short.weight", np.asarray(rope["short_factor"], dtype=np.float32))
    state = hf_model.state_dict()
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    for hf_name, tensor in state.items():
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        w = tensor.float().numpy()
        if arch == "llama" and (".attn_q." in gguf_name or ".attn_k." in gguf_name):
            heads = config.num_attention_heads if ".attn_q." in gguf_name else config.num_key_value_heads
            w = w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
        if gemma and hf_name.endswith("norm.weight"):  # llama.cpp stores Gemma's norms as 1 + w
            w = w + 1
        writer.add_tensor(gguf_name, np.ascontiguousarray(w))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_a_gguf_of_the_same_weights_compiles_and_matches_hf(compiled, tmp_path):
    case, hf, engine = compiled
    path = write_gguf(tmp_path / f"{case.family}.gguf", case.family, case.config, hf)
    artifact = compile_model(CompileRequest(model=str(path), target="cpu", output=str(tmp_path / "art")))
    from_gguf = ember.load(artifact, device="cpu")
    assert from_gguf.manifest.config["model_type"] == ("llama" if case.family == "mistral" else case.family)
    assert from_gguf.manifest.config.get("partial_rotary_factor") == engine.manifest.config.get("partial_rotary_factor")
    ours, theirs = from_gguf.manifest.config["rope_scaling"], engine.manifest.config["rope_scaling"]
    assert (ours is None) == (theirs is None) and (ours or {}).keys() == (theirs or {}).keys()
    for key, value in (theirs or {}).items():  # the GGUF stores the factors as float32
        assert ours[key] == (pytest.approx(value, rel=1e-6) if not isinstance(value, str) else value), key
    ids = prompt(case)
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits[0].numpy()
    np.testing.assert_allclose(from_gguf.score(ids), ref, atol=2e-5, rtol=1e-4)


def hf_windowed_nll(hf, ids, context, stride=None):
    """transformers' own loss over windows, written from Hugging Face's perplexity guide: a window of `context`
    tokens every `stride` tokens, labels -100 except the tokens no earlier window scored (stride=None: llama.cpp's
    chunks of `context` tokens labelled from position context // 2 + 1 on). Returns (sum of NLL, tokens scored)."""
    total, count, scored_to = 0.0, 0, 0
    starts = range(0, len(ids) - context + 1, context) if stride is None else range(0, len(ids), stride)
    for start in starts:
        stop = min(start + context, len(ids))
        window = torch.tensor([ids[start:stop]])
        labels = window.clone()
        labels[0, : (context // 2 + 1) if stride is None else scored_to - start] = -100
        n = int((labels[0, 1:] != -100).sum())  # the model shifts labels: position 0 is never a target
        with torch.no_grad():
            total += float(hf(window, labels=labels).loss) * n
        count, scored_to = count + n, stop
        if stop == len(ids):
            break
    return total, count


@pytest.mark.parametrize("compiled", ["llama-gqa-llama3rope"], indirect=True)
@pytest.mark.parametrize("context,stride", [(16, 6), (16, 8), (12, None)])
def test_perplexity_matches_transformers_strided_loss(compiled, context, stride):
    """`ember eval --perplexity`'s windows and float64 log-softmax against transformers' cross-entropy (float32) on
    the same ids: the strided rule (stride 6 leaves a short last window) and llama.cpp's chunks (61 tokens = 5 chunks
    of 12 and a dropped tail)."""
    case, hf, engine = compiled
    ids = np.random.default_rng(4).integers(0, case.config.vocab_size, size=61).tolist()
    ours = engine.perplexity(ids, context=context, stride=stride, scoring="strided" if stride else "llama.cpp")
    total, count = hf_windowed_nll(hf, ids, context, stride)
    assert ours.tokens_scored == count == (60 if stride else 5 * (12 - 6 - 1))
    assert abs(ours.mean_nll - total / count) <= 1e-4 * (total / count)
    assert abs(ours.perplexity - np.exp(total / count)) <= 1e-4 * np.exp(total / count)


@pytest.mark.parametrize("name", ["gemma3-local-global", "gemma2-softcap"])
def test_16bit_cpu_build_follows_hf_through_windows_and_caps(name, tmp_path):
    """The cpu build in float16 (the golden reference of a 16-bit gpu build: `ember verify`) applies per-layer
    windows and soft-capping too (targets/cpu/attention.py decode_paged_16bit and the 16-bit prefill kernels): a
    prompt 3x the window prefilled in 5-token chunks, then 8 decode steps fed HF's greedy tokens, within float16
    rounding of HF's float32 logits and with HF's top-1 at every step."""
    from transformers import AutoModelForCausalLM

    case = CASES[name]
    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_config(case.config, attn_implementation="eager").eval()
    hf.save_pretrained(tmp_path / "hf")
    artifact = compile_model(CompileRequest(model=str(tmp_path / "hf"), target="cpu", dtype="float16",
                                            output=str(tmp_path / "art")))
    engine = ember.load(artifact, device="cpu", prefill_chunk_size=5)
    assert engine.manifest.kv_cache.window_in_kernels and engine.manifest.kv_cache.dtype == "float16"
    ids = prompt(case, seed=3)
    with torch.no_grad():
        full = hf.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False, eos_token_id=None,
                           pad_token_id=0)
        ref = hf(full).logits[0].numpy()
    runner = engine.runner
    runner.reset()
    runner.add_sequence(0)
    ours = [runner.prefill([0], [ids])[0]]
    for t in full[0, len(ids):-1].tolist():
        ours.append(runner.decode([0], [t])[0].copy())
    ours = np.stack(ours).astype(np.float32)
    expect = ref[len(ids) - 1:-1]
    scale = float(np.abs(expect).max())
    assert float(np.abs(ours - expect).max()) / scale < 2e-2
    assert (ours.argmax(-1) == expect.argmax(-1)).all()
