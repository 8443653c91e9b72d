"""config.json parsing (transformers 4 and 5 styles), presets, and source resolution errors."""
import json

import pytest

from ember.errors import ConfigError, ModelFormatError
from ember.frontend.config import ModelConfig
from ember.frontend.models import parameter_count
from ember.frontend.presets import PRESETS, preset_config
from ember.frontend.source import resolve_model

BASE = dict(model_type="llama", vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2)
LLAMA3 = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


def test_transformers4_and_5_rope_configs_agree():
    v4 = ModelConfig.from_dict({**BASE, "rope_theta": 5e5, "rope_scaling": {"rope_type": "llama3", **LLAMA3}})
    v5 = ModelConfig.from_dict({**BASE, "rope_parameters": {"rope_theta": 5e5, "rope_type": "llama3", **LLAMA3}})
    old = ModelConfig.from_dict({**BASE, "rope_theta": 5e5, "rope_scaling": {"type": "llama3", **LLAMA3}})
    assert v4 == v5 == old
    assert v4.rope_theta == 5e5 and v4.rope_scaling["rope_type"] == "llama3"
    plain = ModelConfig.from_dict({**BASE, "rope_parameters": {"rope_theta": 1e4, "rope_type": "default"}})
    assert plain.rope_scaling is None and plain.head_dim == 16


def test_transformers_configs_roundtrip():
    from transformers import LlamaConfig, MistralConfig, Qwen2Config

    llama = ModelConfig.from_dict(LlamaConfig(**{k: v for k, v in BASE.items() if k != "model_type"}).to_dict())
    assert (llama.num_key_value_heads, llama.qkv_bias, llama.tie_word_embeddings) == (2, False, False)
    mistral = ModelConfig.from_dict(MistralConfig(sliding_window=7, **{k: v for k, v in BASE.items()
                                                                       if k != "model_type"}).to_dict())
    assert mistral.sliding_window == 7 and mistral.architecture == "llama"
    qwen = ModelConfig.from_dict(Qwen2Config(tie_word_embeddings=True, **{k: v for k, v in BASE.items()
                                                                           if k != "model_type"}).to_dict())
    assert qwen.qkv_bias and not qwen.o_bias and qwen.tie_word_embeddings and qwen.sliding_window is None


def test_missing_field_and_unknown_architecture_are_one_line_errors(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({k: v for k, v in BASE.items() if k != "hidden_size"}))
    with pytest.raises(ConfigError, match=r"config.json: missing field 'hidden_size'"):
        ModelConfig.from_file(path)
    path.write_text(json.dumps({**BASE, "model_type": "gptx"}))
    with pytest.raises(ConfigError, match=r"unknown architecture model_type='gptx' \(supported: gemma2, gemma3, "
                                          r"gemma3_text, llama, mistral"):
        ModelConfig.from_file(path)
    with pytest.raises(ConfigError, match="rope type 'yarn' is not supported"):
        ModelConfig.from_dict({**BASE, "rope_scaling": {"rope_type": "yarn", "factor": 2.0}})


def test_presets_hold_published_values():
    assert set(PRESETS) >= {"llama2-7b", "llama3-8b", "llama3.1-8b", "llama3.2-1b", "llama3.2-3b", "mistral-7b",
                            "qwen2.5-0.5b", "qwen2.5-7b", "smollm2-135m"}
    assert abs(parameter_count(preset_config("llama3-8b")) - 8.03e9) < 0.01e9
    assert abs(parameter_count(preset_config("llama2-7b")) - 6.74e9) < 0.01e9
    assert abs(parameter_count(preset_config("qwen2.5-0.5b")) - 0.494e9) < 0.002e9  # tied, with qkv bias ignored
    assert abs(parameter_count(preset_config("qwen3-8b")) - 8.19e9) < 0.01e9
    assert abs(parameter_count(preset_config("qwen3-0.6b")) - 0.596e9) < 0.002e9  # tied
    assert preset_config("mistral-7b").sliding_window == 4096
    assert preset_config("llama3.1-8b").rope_scaling["factor"] == 8.0


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_parameter_count_is_transformers_own(name):
    """Counted from ember's model definition; transformers builds the same config on the meta device (no memory)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    raw = PRESETS[name]
    hf_config = AutoConfig.for_model(**raw)
    with torch.device("meta"):
        hf = AutoModelForCausalLM.from_config(hf_config)
    assert parameter_count(preset_config(name)) == sum(p.numel() for p in hf.parameters())


def test_config_values_ember_does_not_implement_are_refused_by_name():
    with pytest.raises(ConfigError, match="field 'mlp_bias' is true"):
        ModelConfig.from_dict({**BASE, "mlp_bias": True})
    with pytest.raises(ConfigError, match="field 'hidden_act' is 'gelu'"):
        ModelConfig.from_dict({**BASE, "hidden_act": "gelu"})
    layers = BASE["num_hidden_layers"]
    mixed = ["full_attention"] + ["sliding_attention"] * (layers - 1)
    with pytest.raises(ConfigError, match="field 'layer_types' mixes full and sliding-window layers"):
        ModelConfig.from_dict({**BASE, "sliding_window": 16, "layer_types": mixed})
    assert ModelConfig.from_dict({**BASE, "sliding_window": 16,
                                  "layer_types": ["full_attention"] * layers}).sliding_window is None
    qwen2 = {**BASE, "model_type": "qwen2", "use_sliding_window": True, "sliding_window": 16}
    with pytest.raises(ConfigError, match="field 'max_window_layers' is 1"):
        ModelConfig.from_dict({**qwen2, "max_window_layers": 1})
    assert ModelConfig.from_dict({**qwen2, "max_window_layers": 0}).sliding_window == 16
    assert ModelConfig.from_dict({**qwen2, "max_window_layers": layers}).sliding_window is None


def test_unknown_preset_lists_known_ones():
    with pytest.raises(ConfigError, match=r"unknown model 'llama9'.*presets: llama2-7b, llama3-8b"):
        resolve_model("llama9")


def test_pickle_checkpoints_are_refused(tmp_path):
    with pytest.raises(ModelFormatError, match="pickle"):
        resolve_model(str(tmp_path / "pytorch_model.bin"))
    (tmp_path / "config.json").write_text(json.dumps(BASE))
    (tmp_path / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(ModelFormatError, match="pytorch_model.bin: PyTorch pickle checkpoints are refused"):
        resolve_model(str(tmp_path))
