"""Tiny random Llama models: a Hugging Face folder, and GGUF files written like llama.cpp's converter."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import gguf
import numpy as np
import torch
from gguf import GGMLQuantizationType as Q

from ember.passes.quant_schemes import SCHEMES, dequantize, quantize

VOCAB = 320  # 3 specials + 256 byte tokens + 61 words


def llama_config(**overrides):
    from transformers import LlamaConfig

    sizes = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, rms_norm_eps=1e-5, max_position_embeddings=256, bos_token_id=1,
                 eos_token_id=2, tie_word_embeddings=False)
    return LlamaConfig(**{**sizes, **overrides})


def random_llama(seed: int = 0, **overrides):
    """A random HF Llama (eager attention) whose norms and biases are not all ones / zeros."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(llama_config(**overrides), attn_implementation="eager").eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def hf_logits(model, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


def with_weights(model, replace: Callable[[str, np.ndarray], np.ndarray | None]):
    """A copy of `model` with each 2-D weight replaced by replace(name, weight) (None keeps it)."""
    import copy

    clone = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in clone.named_parameters():
            new = replace(name, p.numpy()) if p.ndim == 2 else None
            if new is not None:
                p.copy_(torch.from_numpy(np.asarray(new, dtype=np.float32)))
    return clone


def requantized(w: np.ndarray, scheme: str) -> np.ndarray:
    """What ember computes with for a float weight stored in `scheme`."""
    fmt = SCHEMES[scheme].format
    return dequantize(quantize(w, fmt), fmt, w.shape[1])


# -- GGUF ------------------------------------------------------------------------------------------------------------
def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's q/k row permutation (whole rows, so it applies to quantized blocks as well)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# byte offsets of a block's fp16 d (, dmin), and d's typical size for weights of std ~0.02-0.05
KQUANT_HALVES = {Q.Q2_K: (80, 82), Q.Q3_K: (108,), Q.Q4_K: (0, 2), Q.Q5_K: (0, 2), Q.Q6_K: (208,)}
_KQUANT_D = {Q.Q2_K: 2e-3, Q.Q3_K: 5e-4, Q.Q4_K: 2e-4, Q.Q5_K: 2e-4, Q.Q6_K: 3e-5}


def random_kquant_blocks(shape: tuple[int, int], qtype: Q, seed: int) -> np.ndarray:
    """Random K-quant super blocks (gguf-py cannot quantize them): any codes, fp16 d / dmin scaled so the weights'
    std is about 0.02-0.05, as a trained model's. uint8 [rows, bytes per row]."""
    rng = np.random.default_rng(seed)
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, (shape[0], shape[1] // block, size), dtype=np.uint8)
    for offset in KQUANT_HALVES[qtype]:
        d = np.abs(rng.normal(_KQUANT_D[qtype], _KQUANT_D[qtype] / 10, raw.shape[:2])).astype(np.float16)
        raw[..., offset:offset + 2] = d.view(np.uint8).reshape(*raw.shape[:2], 2)
    return raw.reshape(shape[0], -1)


def write_gguf(path: Path, model, type_of: Callable[[str], Q]) -> Path:
    """`model`'s weights as a llama GGUF; type_of(gguf tensor name) picks each 2-D tensor's type (1-D: F32). K-quant
    tensors are random super blocks (the oracle is the file itself, read by transformers)."""
    config = model.config
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(float(config.rope_parameters["rope_theta"]))
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    tokens += [f"\u2581w{i}" for i in range(config.vocab_size - len(tokens))]
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * len(tokens))
    writer.add_token_types([2, 3, 3] + [6] * 256 + [1] * (len(tokens) - 259))
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    for hf_name, tensor in model.state_dict().items():
        w = tensor.float().numpy()
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        qtype = type_of(name) if w.ndim == 2 else Q.F32
        if qtype in KQUANT_HALVES:
            data = random_kquant_blocks(w.shape, qtype, seed=len(name) * 7919 + sum(map(ord, name)))
        else:
            data = w.astype(np.float16) if qtype == Q.F16 else (w if qtype == Q.F32 else gguf.quants.quantize(w, qtype))
        if ".attn_q." in name or ".attn_k." in name:
            data = _permute(data, config.num_attention_heads if ".attn_q." in name else config.num_key_value_heads)
        writer.add_tensor(name, data, raw_dtype=None if qtype in (Q.F32, Q.F16) else qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def load_gguf_model(path: Path):
    """transformers' own GGUF loader (dequantizes with gguf-py): the oracle."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32,
                                                attn_implementation="eager").eval()
