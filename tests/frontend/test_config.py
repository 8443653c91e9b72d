"""config.json parsing (transformers 4 and 5 styles), presets, and source resolution errors."""
import json
import math

import numpy as np
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
    with pytest.raises(ConfigError, match="rope type .dynamic. is not supported"):
        ModelConfig.from_dict({**BASE, "rope_scaling": {"rope_type": "dynamic", "factor": 2.0}})


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
    for name in ("llama3-70b", "llama3.1-70b"):  # meta-llama's config.json; the published count of parameters
        assert parameter_count(preset_config(name)) == 70_553_706_496
    assert preset_config("llama3-70b").rope_scaling is None and preset_config("llama3-70b").max_position_embeddings == 8192
    assert preset_config("llama3.1-70b").rope_scaling["rope_type"] == "llama3"
    assert preset_config("llama3.1-70b").max_position_embeddings == 131072
    assert parameter_count(preset_config("gemma3-1b")) == 999_885_952  # tied
    assert parameter_count(preset_config("gemma2-2b")) == 2_614_341_888  # tied
    assert abs(parameter_count(preset_config("mixtral-8x7b")) - 46.70e9) < 0.01e9  # all experts, 12.9B active
    assert abs(parameter_count(preset_config("qwen3-30b-a3b")) - 30.53e9) < 0.01e9
    gemma3 = preset_config("gemma3-1b")
    assert gemma3.window_layers == tuple(i for i in range(26) if (i + 1) % 6) and gemma3.sliding_window == 512
    assert gemma3.layer_rope(0) == (10000.0, None) and gemma3.layer_rope(5) == (1e6, None)
    gemma2 = preset_config("gemma2-2b")
    assert gemma2.window_layers == tuple(range(0, 26, 2)) and gemma2.attn_logit_softcapping == 50.0


GEMMA3 = dict(model_type="gemma3_text", vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=6,
              num_attention_heads=4, num_key_value_heads=2, head_dim=32, sliding_window=8, query_pre_attn_scalar=48)


def test_gemma3_configs_of_transformers_4_and_5_agree():
    from transformers import Gemma3TextConfig

    v4 = ModelConfig.from_dict({**GEMMA3, "rope_theta": 1e6, "rope_local_base_freq": 1e4, "sliding_window_pattern": 3,
                                "rope_scaling": {"rope_type": "linear", "factor": 8.0}})
    v5 = ModelConfig.from_dict(Gemma3TextConfig(**{k: v for k, v in GEMMA3.items() if k != "model_type"},
                                                layer_types=["sliding_attention"] * 2 + ["full_attention"]
                                                + ["sliding_attention"] * 2 + ["full_attention"],
                                                rope_parameters={"full_attention": {"rope_type": "linear",
                                                                                    "factor": 8.0, "rope_theta": 1e6},
                                                                 "sliding_attention": {"rope_type": "default",
                                                                                       "rope_theta": 1e4}}).to_dict())
    for cfg in (v4, v5):
        assert cfg.window_layers == (0, 1, 3, 4) and cfg.tie_word_embeddings
        assert cfg.layer_rope(0) == (1e4, None) and cfg.layer_rope(2) == (1e6, {"rope_type": "linear", "factor": 8.0})
        assert cfg.query_pre_attn_scalar == 48.0 and cfg.hidden_act == "gelu_pytorch_tanh"


def test_gemma_attention_scale_is_query_pre_attn_scalar_and_windows_are_per_layer():
    from ember.frontend.models import build_module

    module = build_module(ModelConfig.from_dict(GEMMA3), "tiny")
    nodes = [n for _, n in module.iter_nodes() if n.op == "paged_attention"][:6]
    assert {n.attrs["sm_scale"] for n in nodes} == {48 ** -0.5}
    assert [n.attrs["sliding_window"] for n in nodes] == [8] * 5 + [None]
    assert module.kv_cache.window_layers == (0, 1, 2, 3, 4)


def test_gemma_values_ember_does_not_implement_are_refused_by_name():
    with pytest.raises(ConfigError, match="field 'model_type' is 'gemma3', the multimodal Gemma 3"):
        ModelConfig.from_dict({**GEMMA3, "model_type": "gemma3"})
    with pytest.raises(ConfigError, match="field 'hidden_activation' is 'relu'"):
        ModelConfig.from_dict({**GEMMA3, "hidden_activation": "relu"})
    with pytest.raises(ConfigError, match="field 'use_bidirectional_attention' is true"):
        ModelConfig.from_dict({**GEMMA3, "use_bidirectional_attention": True})
    assert ModelConfig.from_dict({**GEMMA3, "sliding_window": None}).sliding_window == 4096  # transformers' default
    every_global = ModelConfig.from_dict({**GEMMA3, "layer_types": ["full_attention"] * 6})
    assert every_global.sliding_window is None and every_global.window_layers is None


def test_targets_without_per_layer_windows_or_softcap_refuse_gemma_in_one_line(monkeypatch):
    from ember.frontend.models import build_module
    from ember.targets.base import parse_target
    from ember.targets.lower import _LoweredModel, _check_attention_features

    def check(name: str, spec: str, dtype: str = "float16") -> None:
        module = build_module(preset_config(name), name, dtype=dtype)
        target = parse_target(spec)
        _check_attention_features(_LoweredModel(module, target)._plan, module, target)

    for name, problem in (("gemma3-1b", "a sliding window on 22 of 26 layers"), ("gemma2-2b", "a sliding window")):
        with pytest.raises(ConfigError, match=f"--target metal: {problem}"):
            check(name, "metal")
        check(name, "cuda:sm_90")  # per-layer windows and soft-capping in ember's cuda kernels (head dim 256)
        check(name, "cpu", "float32")
        with monkeypatch.context() as patch:  # TVM's cuda prefill kernels (A/B switch) have neither
            patch.setenv("EMBER_CUDA_PREFILL", "0")
            with pytest.raises(ConfigError, match=f"--target cuda:sm_90: {problem}"):
                check(name, "cuda:sm_90")


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


PHI3 = dict(model_type="phi3", vocab_size=100, hidden_size=128, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
            original_max_position_embeddings=256)
LONGROPE = {"type": "longrope", "short_factor": [1.0] * 12, "long_factor": [2.0] * 12}


def test_phi3_config_partial_rotary_and_longrope_as_published_and_as_transformers5_writes_it():
    from transformers import Phi3Config

    v4 = ModelConfig.from_dict({**PHI3, "partial_rotary_factor": 0.75, "rope_theta": 1e4, "rope_scaling": LONGROPE})
    assert v4.architecture == "phi3" and v4.rotary_dim == 24 and v4.head_dim == 32
    scaling = v4.rope_scaling
    assert scaling["rope_type"] == "longrope" and scaling["original_max_position_embeddings"] == 256
    assert scaling["short_factor"] == [1.0] * 12 and scaling["long_factor"] == [2.0] * 12
    assert scaling["attention_factor"] == pytest.approx((1 + math.log(4) / math.log(256)) ** 0.5)
    hf = Phi3Config(**{k: v for k, v in PHI3.items() if k != "model_type"}, partial_rotary_factor=0.75,
                    rope_scaling=dict(LONGROPE)).to_dict()
    assert "rope_parameters" in hf and ModelConfig.from_dict(hf).rope_scaling == scaling
    plain = ModelConfig.from_dict(Phi3Config(**{k: v for k, v in PHI3.items() if k != "model_type"}).to_dict())
    assert plain.rope_scaling is None and plain.rotary_dim == 32
    assert ModelConfig.from_manifest(v4.to_dict()) == v4
    # a window no position can leave (Phi-4-mini: 262144 of 131072) is no window
    assert ModelConfig.from_dict({**PHI3, "sliding_window": 4096}).sliding_window is None
    assert ModelConfig.from_dict({**PHI3, "sliding_window": 100}).sliding_window == 100


def test_phi3_values_ember_does_not_implement_are_refused_by_name():
    with pytest.raises(ConfigError, match=r"field 'rope_scaling.short_mscale' is not implemented for longrope"):
        ModelConfig.from_dict({**PHI3, "rope_scaling": {**LONGROPE, "short_mscale": 1.1}})
    with pytest.raises(ConfigError, match=r"field 'rope_scaling.short_factor' must be a list of rotary_dim / 2 = 16"):
        ModelConfig.from_dict({**PHI3, "rope_scaling": LONGROPE})  # full rotary: 16 factors, not 12
    with pytest.raises(ConfigError, match=r"rope type 'yarn' is not supported for phi3"):
        ModelConfig.from_dict({**PHI3, "rope_scaling": {"type": "yarn", "factor": 2.0}})
    with pytest.raises(ConfigError, match=r"field 'attention_bias' is true"):
        ModelConfig.from_dict({**PHI3, "attention_bias": True})
    with pytest.raises(ConfigError, match=r"field 'partial_rotary_factor' is 0.5: partial rotary embeddings are not "
                                          r"implemented for model_type 'llama'"):
        ModelConfig.from_dict({**BASE, "partial_rotary_factor": 0.5})


def test_phi_presets_hold_published_shapes_and_phi4_mini_is_benchmark_only():
    phi3, phi4 = preset_config("phi-3-mini-4k"), preset_config("phi-4-mini")
    assert parameter_count(phi3) == 3_821_079_552 and parameter_count(phi4) == 3_836_021_760
    assert (phi3.head_dim, phi3.rotary_dim, phi3.sliding_window, phi3.rope_scaling) == (96, 96, 2047, None)
    assert (phi4.head_dim, phi4.rotary_dim, phi4.num_key_value_heads, phi4.tie_word_embeddings) == (128, 96, 8, True)
    assert phi4.rope_scaling["rope_type"] == "longrope" and len(phi4.rope_scaling["long_factor"]) == 48
    assert phi4.rope_scaling["attention_factor"] == pytest.approx((1 + math.log(32) / math.log(4096)) ** 0.5)
    with pytest.raises(ConfigError, match=r"preset phi-4-mini makes benchmark builds only .*pass random_weights"):
        resolve_model("phi-4-mini")
    assert resolve_model("phi-4-mini", random_weights=True).config == phi4


def test_yarn_scaling_reads_as_transformers_computes_it():
    """Qwen3's long-context YaRN config: ember's frequencies and cos/sin scale against transformers' own."""
    import torch
    from transformers import Qwen3Config
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from ember.targets.rope import inverse_frequencies, rope_output_scale

    raw = dict(model_type="qwen3", vocab_size=1000, hidden_size=4096, intermediate_size=12288, num_hidden_layers=2,
               num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=131072,
               rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768},
               rope_theta=1000000.0)
    cfg = ModelConfig.from_dict(raw)
    assert cfg.rope_scaling["rope_type"] == "yarn" and cfg.rope_scaling["beta_fast"] == 32.0
    hf = Qwen3Config(**{k: v for k, v in raw.items() if k not in ("model_type", "rope_scaling", "rope_theta")},
                     rope_parameters={"rope_theta": 1e6, **raw["rope_scaling"]})
    ref_inv, ref_scale = ROPE_INIT_FUNCTIONS["yarn"](hf, torch.device("cpu"))
    ours = inverse_frequencies(cfg.rope_theta, cfg.head_dim, cfg.rope_scaling)
    np.testing.assert_allclose(ours, ref_inv.numpy(), rtol=1e-6)
    assert abs(rope_output_scale(cfg.rope_scaling) - ref_scale) < 1e-9
    with pytest.raises(ConfigError, match="yarn rope scaling is missing field 'original_max_position_embeddings'"):
        ModelConfig.from_dict({**raw, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}})
