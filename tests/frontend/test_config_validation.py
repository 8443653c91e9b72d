"""Every config field ember reads is checked by type and range, naming the file and the field (never a bare
ValueError or ZeroDivisionError), for config.json and for GGUF metadata."""
from __future__ import annotations

import json
import math

import pytest

from ember.errors import ConfigError, ModelFormatError
from ember.frontend.config import ModelConfig

BASE = dict(model_type="llama", vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2)
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 8192}

BAD_FIELDS = [
    ({"hidden_size": "576"}, "field 'hidden_size' must be a positive integer, got '576'"),
    ({"hidden_size": 64.0}, "field 'hidden_size' must be a positive integer, got 64.0"),
    ({"num_attention_heads": 0}, "field 'num_attention_heads' must be a positive integer, got 0"),
    ({"vocab_size": True}, "field 'vocab_size' must be a positive integer, got True"),
    ({"num_hidden_layers": -2}, "field 'num_hidden_layers' must be a positive integer, got -2"),
    ({"intermediate_size": None}, "missing field 'intermediate_size'"),
    ({"num_key_value_heads": 3}, "field 'num_key_value_heads' must be a positive integer dividing "
                                 "num_attention_heads 4, got 3"),
    ({"num_key_value_heads": 0}, "field 'num_key_value_heads' must be a positive integer, got 0"),
    ({"num_attention_heads": 5}, "field 'num_attention_heads' 5 does not divide hidden_size 64"),
    ({"num_attention_heads": 5, "head_dim": 15, "num_key_value_heads": 5}, "field 'head_dim' must be a positive "
                                                                          "even integer"),
    ({"rms_norm_eps": -1e-5}, "field 'rms_norm_eps' must be a finite number > 0, got -1e-05"),
    ({"rms_norm_eps": "tiny"}, "field 'rms_norm_eps' must be a finite number > 0, got 'tiny'"),
    ({"rope_theta": math.inf}, "field 'rope_theta' must be a finite number > 0, got inf"),
    ({"max_position_embeddings": 0}, "field 'max_position_embeddings' must be a positive integer, got 0"),
    ({"tie_word_embeddings": "yes"}, "field 'tie_word_embeddings' must be true or false, got 'yes'"),
    ({"attention_bias": 1}, "field 'attention_bias' must be true or false, got 1"),
    ({"model_type": "mistral", "sliding_window": "4k"}, "field 'sliding_window' must be a positive integer"),
    ({"model_type": "mistral", "sliding_window": 1}, "field 'sliding_window' must be an integer of at least 2"),
    ({"hidden_act": "gelu"}, "field 'hidden_act' is 'gelu', which ember does not support (supported: silu"),
    ({"bos_token_id": "<s>"}, "field 'bos_token_id' must be a token id (an integer >= 0), got '<s>'"),
    ({"eos_token_id": [2, -1]}, "field 'eos_token_id' must be a token id >= 0 or a list of them, got [2, -1]"),
    ({"rope_scaling": "llama3"}, "field 'rope_scaling' must be an object, got 'llama3'"),
    ({"rope_scaling": {**LLAMA3, "factor": 0}}, "field 'rope_scaling.factor' must be a finite number > 0, got 0"),
    ({"rope_scaling": {**LLAMA3, "high_freq_factor": 1.0}}, "field 'rope_scaling.high_freq_factor' must exceed "
                                                             "low_freq_factor 1.0, got 1.0"),
    ({"rope_scaling": {**LLAMA3, "original_max_position_embeddings": 8192.5}},
     "field 'rope_scaling.original_max_position_embeddings' must be a positive integer, got 8192.5"),
    ({"rope_parameters": {"rope_theta": "1e4"}}, "field 'rope_parameters.rope_theta' must be a finite number > 0"),
]


@pytest.mark.parametrize("change, message", BAD_FIELDS, ids=[m.split("'")[1] for _, m in BAD_FIELDS])
def test_bad_field_names_the_file_and_the_field(tmp_path, change, message):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**BASE, **change}))
    with pytest.raises(ConfigError) as caught:
        ModelConfig.from_file(path)
    assert str(caught.value).startswith(f"{path}: ") and message in str(caught.value), str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_config_that_is_not_an_object(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("[1, 2]")
    with pytest.raises(ConfigError, match=r"config.json: expected a JSON object, got list"):
        ModelConfig.from_file(path)


def test_nulls_mean_defaults_and_good_configs_still_load():
    cfg = ModelConfig.from_dict({**BASE, "num_key_value_heads": None, "head_dim": None, "sliding_window": None,
                                 "rope_scaling": None, "eos_token_id": [2, 3], "bos_token_id": 1})
    assert (cfg.num_key_value_heads, cfg.head_dim, cfg.sliding_window, cfg.rope_scaling) == (4, 16, None, None)
    assert cfg.eos_token_id == [2, 3] and cfg.bos_token_id == 1
    scaled = ModelConfig.from_dict({**BASE, "rope_scaling": LLAMA3})
    assert scaled.rope_scaling == LLAMA3


def test_direct_construction_is_checked_too():
    with pytest.raises(ConfigError, match="ModelConfig: field 'num_attention_heads' must be a positive integer"):
        ModelConfig(model_type="llama", vocab_size=8, hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                    num_attention_heads=0)


# -- GGUF metadata ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gguf_parts():
    from test_gguf import hf_weights

    return hf_weights("llama", num_hidden_layers=1)


@pytest.mark.parametrize("meta, needle", [
    ({"llama.rope.freq_base": "big"}, "llama.rope.freq_base: expected a finite number > 0, found 'big'"),
    ({"llama.attention.head_count": 3, "llama.attention.head_count_kv": 1},
     "llama.attention.head_count: 3 does not divide embedding_length 64"),
    ({"llama.attention.sliding_window": "4k"}, "llama.attention.sliding_window: expected a positive integer"),
    ({"tokenizer.ggml.eos_token_id": "</s>"}, "tokenizer.ggml.eos_token_id: expected a token id"),
    ({"llama.attention.layer_norm_rms_epsilon": math.nan}, "layer_norm_rms_epsilon: expected a finite float > 0"),
])
def test_bad_gguf_metadata_names_the_file_and_key(tmp_path, gguf_parts, meta, needle):
    from gguf import GGMLQuantizationType as Q
    from test_gguf import write_gguf

    from ember.frontend.importers.gguf import open_gguf

    config, weights = gguf_parts
    path = write_gguf(tmp_path / "bad.gguf", "llama", config, weights, lambda name: Q.F32, meta=meta)
    with pytest.raises(ModelFormatError) as caught:
        open_gguf(path)
    assert str(caught.value).startswith(f"{path}: ") and needle in str(caught.value), str(caught.value)
