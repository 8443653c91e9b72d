"""Built-in model presets: the published config.json values, so big models compile without weights."""
from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from .config import ModelConfig

_LLAMA3_SCALING_8K = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192,
                      "rope_type": "llama3"}

# Phi-4-mini's LongRoPE factor lists are 48 published numbers each that are not reproduced here: these stand-ins
# (1.0 short, a ramp to ~47 long, the shape of the published ones) give the right shapes and parameter count for
# benchmark builds, and the preset is refused for anything but --random-weights (RANDOM_WEIGHTS_ONLY).
_PHI4_MINI_LONGROPE = {"type": "longrope", "short_factor": [1.0] * 48,
                       "long_factor": [round(1.0 + 46.0 * (i / 47) ** 2, 4) for i in range(48)]}

PRESETS: dict[str, dict[str, Any]] = {
    "llama2-7b": dict(model_type="llama", vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                      num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32, rms_norm_eps=1e-5,
                      rope_theta=10000.0, max_position_embeddings=4096, bos_token_id=1, eos_token_id=2),
    "llama3-8b": dict(model_type="llama", vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                      num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, rms_norm_eps=1e-5,
                      rope_theta=500000.0, max_position_embeddings=8192, bos_token_id=128000,
                      eos_token_id=[128001, 128009]),
    "llama3.1-8b": dict(model_type="llama", vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                        num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, rms_norm_eps=1e-5,
                        rope_theta=500000.0, rope_scaling={"factor": 8.0, **_LLAMA3_SCALING_8K},
                        max_position_embeddings=131072, bos_token_id=128000, eos_token_id=[128001, 128008, 128009]),
    "llama3-70b": dict(model_type="llama", vocab_size=128256, hidden_size=8192, intermediate_size=28672,
                       num_hidden_layers=80, num_attention_heads=64, num_key_value_heads=8, rms_norm_eps=1e-5,
                       rope_theta=500000.0, max_position_embeddings=8192, bos_token_id=128000,
                       eos_token_id=[128001, 128009]),
    "llama3.1-70b": dict(model_type="llama", vocab_size=128256, hidden_size=8192, intermediate_size=28672,
                         num_hidden_layers=80, num_attention_heads=64, num_key_value_heads=8, rms_norm_eps=1e-5,
                         rope_theta=500000.0, rope_scaling={"factor": 8.0, **_LLAMA3_SCALING_8K},
                         max_position_embeddings=131072, bos_token_id=128000, eos_token_id=[128001, 128008, 128009]),
    "llama3.2-1b": dict(model_type="llama", vocab_size=128256, hidden_size=2048, intermediate_size=8192,
                        num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8, head_dim=64,
                        rms_norm_eps=1e-5, rope_theta=500000.0, rope_scaling={"factor": 32.0, **_LLAMA3_SCALING_8K},
                        max_position_embeddings=131072, tie_word_embeddings=True, bos_token_id=128000,
                        eos_token_id=[128001, 128008, 128009]),
    "llama3.2-3b": dict(model_type="llama", vocab_size=128256, hidden_size=3072, intermediate_size=8192,
                        num_hidden_layers=28, num_attention_heads=24, num_key_value_heads=8, head_dim=128,
                        rms_norm_eps=1e-5, rope_theta=500000.0, rope_scaling={"factor": 32.0, **_LLAMA3_SCALING_8K},
                        max_position_embeddings=131072, tie_word_embeddings=True, bos_token_id=128000,
                        eos_token_id=[128001, 128008, 128009]),
    "mistral-7b": dict(model_type="mistral", vocab_size=32000, hidden_size=4096, intermediate_size=14336,
                       num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, rms_norm_eps=1e-5,
                       rope_theta=10000.0, sliding_window=4096, max_position_embeddings=32768, bos_token_id=1,
                       eos_token_id=2),
    "phi-3-mini-4k": dict(model_type="phi3", vocab_size=32064, hidden_size=3072, intermediate_size=8192,
                          num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32, rms_norm_eps=1e-5,
                          rope_theta=10000.0, max_position_embeddings=4096, original_max_position_embeddings=4096,
                          sliding_window=2047, tie_word_embeddings=False, bos_token_id=1,
                          eos_token_id=[32000, 32001, 32007]),
    "phi-4-mini": dict(model_type="phi3", vocab_size=200064, hidden_size=3072, intermediate_size=8192,
                       num_hidden_layers=32, num_attention_heads=24, num_key_value_heads=8, rms_norm_eps=1e-5,
                       rope_theta=10000.0, partial_rotary_factor=0.75, rope_scaling=_PHI4_MINI_LONGROPE,
                       max_position_embeddings=131072, original_max_position_embeddings=4096,
                       sliding_window=262144, tie_word_embeddings=True, bos_token_id=199999,
                       eos_token_id=[200020, 199999]),
    "qwen2.5-0.5b": dict(model_type="qwen2", vocab_size=151936, hidden_size=896, intermediate_size=4864,
                         num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2, rms_norm_eps=1e-6,
                         rope_theta=1000000.0, max_position_embeddings=32768, tie_word_embeddings=True,
                         use_sliding_window=False, bos_token_id=151643, eos_token_id=[151645, 151643]),
    "qwen2.5-7b": dict(model_type="qwen2", vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                       num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4, rms_norm_eps=1e-6,
                       rope_theta=1000000.0, max_position_embeddings=32768, tie_word_embeddings=False,
                       use_sliding_window=False, bos_token_id=151643, eos_token_id=[151645, 151643]),
    "qwen3-0.6b": dict(model_type="qwen3", vocab_size=151936, hidden_size=1024, intermediate_size=3072,
                       num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                       rms_norm_eps=1e-6, rope_theta=1000000.0, max_position_embeddings=40960,
                       tie_word_embeddings=True, use_sliding_window=False, bos_token_id=151643,
                       eos_token_id=151645),
    "qwen3-8b": dict(model_type="qwen3", vocab_size=151936, hidden_size=4096, intermediate_size=12288,
                     num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                     rms_norm_eps=1e-6, rope_theta=1000000.0, max_position_embeddings=40960,
                     tie_word_embeddings=False, use_sliding_window=False, bos_token_id=151643, eos_token_id=151645),
    # google/gemma-3-1b-it and google/gemma-2-2b config.json (transformers 4 spellings)
    "gemma3-1b": dict(model_type="gemma3_text", vocab_size=262144, hidden_size=1152, intermediate_size=6912,
                      num_hidden_layers=26, num_attention_heads=4, num_key_value_heads=1, head_dim=256,
                      hidden_activation="gelu_pytorch_tanh", query_pre_attn_scalar=256, rms_norm_eps=1e-6,
                      rope_theta=1000000.0, rope_local_base_freq=10000.0, rope_scaling=None, sliding_window=512,
                      sliding_window_pattern=6, max_position_embeddings=32768, tie_word_embeddings=True,
                      attn_logit_softcapping=None, final_logit_softcapping=None, bos_token_id=2,
                      eos_token_id=[1, 106]),
    "gemma2-2b": dict(model_type="gemma2", vocab_size=256000, hidden_size=2304, intermediate_size=9216,
                      num_hidden_layers=26, num_attention_heads=8, num_key_value_heads=4, head_dim=256,
                      hidden_activation="gelu_pytorch_tanh", query_pre_attn_scalar=256, rms_norm_eps=1e-6,
                      rope_theta=10000.0, sliding_window=4096, max_position_embeddings=8192,
                      tie_word_embeddings=True, attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
                      bos_token_id=2, eos_token_id=1),
    # mistralai/Mixtral-8x7B-v0.1 and Qwen/Qwen3-30B-A3B config.json
    "mixtral-8x7b": dict(model_type="mixtral", vocab_size=32000, hidden_size=4096, intermediate_size=14336,
                         num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, rms_norm_eps=1e-5,
                         rope_theta=1000000.0, sliding_window=None, max_position_embeddings=32768,
                         num_local_experts=8, num_experts_per_tok=2, tie_word_embeddings=False, bos_token_id=1,
                         eos_token_id=2),
    "qwen3-30b-a3b": dict(model_type="qwen3_moe", vocab_size=151936, hidden_size=2048, intermediate_size=6144,
                          moe_intermediate_size=768, num_hidden_layers=48, num_attention_heads=32,
                          num_key_value_heads=4, head_dim=128, num_experts=128, num_experts_per_tok=8,
                          norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[], rms_norm_eps=1e-6,
                          rope_theta=1000000.0, max_position_embeddings=40960, tie_word_embeddings=False,
                          use_sliding_window=False, bos_token_id=151643, eos_token_id=151645),
    "smollm2-135m": dict(model_type="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536,
                         num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, rms_norm_eps=1e-5,
                         rope_theta=100000.0, max_position_embeddings=8192, tie_word_embeddings=True,
                         bos_token_id=1, eos_token_id=2),
}


# preset -> why it only makes benchmark builds (its config is not the published one in every value)
RANDOM_WEIGHTS_ONLY: dict[str, str] = {
    "phi-4-mini": "its LongRoPE factor lists are stand-ins, not the published ones",
}


def preset_config(name: str) -> ModelConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset {name!r} (known: {', '.join(PRESETS)})")
    return ModelConfig.from_dict(PRESETS[name], source=f"preset {name}")
