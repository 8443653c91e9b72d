"""shard_tensor_parallel on traced tiny configs: where the collectives go, how each weight is cut, what each shard's
materialized weights are, and the one-line refusals."""
import numpy as np
import pytest

from ember.errors import ConfigError
from ember.frontend.config import ModelConfig
from ember.frontend.models import build_module
from ember.ir.printer import format_function
from ember.passes.manager import PassManager, default_pipeline
from ember.passes.materialize import materialize
from ember.passes.shard_tensor_parallel import (VOCAB_START, ShardTensorParallel, check_divisible,
                                                check_quantized_shards, shard_layout)

BASE = dict(model_type="llama", vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=8, num_key_value_heads=4, rms_norm_eps=1e-5, rope_theta=10000.0,
            max_position_embeddings=64, tie_word_embeddings=False)


def sharded(shards, quant="q0f32", **overrides):
    cfg = ModelConfig.from_dict({**BASE, **overrides})
    module = build_module(cfg, "tiny", static_decode=True)
    return PassManager(default_pipeline(quant, tensor_parallel=shards)).run(module)


class Arrays:
    def __init__(self, arrays):
        self.arrays = arrays

    def get(self, name):
        return self.arrays[name]

    def origin(self, name):
        return "test"


def test_collectives_sit_after_row_linears_embedding_and_head():
    module = sharded(2)
    text = format_function(module.functions["prefill"])
    assert text.count("all_reduce(") == 1 + 2 * 2  # the embedding, then o_proj and down_proj of each layer
    assert text.count("all_gather(") == 1 and "vocab_shard(" in text
    # each shard's attention: 4 of 8 query heads and 2 of 4 kv heads, over its fused qkv slice
    assert "num_heads=4, num_kv_heads=2" in text
    assert module.kv_cache.num_attention_heads == 4 and module.kv_cache.num_kv_heads == 2
    assert "%logits.shard" not in text and "f32[1, num_logits, 320] = all_gather(" in text
    params = {name: p.type.shape for name, p in module.params.items()}
    assert params["model.layers.0.self_attn.qkv_proj.weight"] == (32 + 16 + 16, 64)
    assert params["model.layers.0.self_attn.o_proj.weight"] == (64, 32)
    assert params["model.layers.0.mlp.gate_up_proj.weight"] == (128, 64)
    assert params["model.layers.0.mlp.down_proj.weight"] == (64, 64)
    assert params["model.embed_tokens.weight"] == params["lm_head.weight"] == (160, 64)
    layout = shard_layout(module)
    assert layout["model.layers.0.self_attn.qkv_proj.weight"] == "column"
    assert layout["model.layers.1.mlp.down_proj.weight"] == "row"
    assert layout["lm_head.weight"] == layout["model.embed_tokens.weight"] == "vocab"
    assert layout["model.norm.weight"] == "replicated" and layout[VOCAB_START] == "rank"


def test_each_shard_materializes_its_own_slices():
    module = sharded(2)
    rng = np.random.default_rng(0)
    arrays = {name: rng.standard_normal(shape).astype(np.float32) for p in module.params.values()
              for name, shape in zip(p.info.get("sources", []), p.info.get("source_shapes", []))}
    provider = Arrays(arrays)
    layer = "model.layers.0"
    for rank in (0, 1):
        qkv = materialize(module.params[f"{layer}.self_attn.qkv_proj.weight"], provider, (rank, 2))
        q, k, v = (arrays[f"{layer}.self_attn.{n}_proj.weight"] for n in "qkv")
        expect = np.concatenate([q[32 * rank:32 * (rank + 1)], k[16 * rank:16 * (rank + 1)],
                                 v[16 * rank:16 * (rank + 1)]])
        np.testing.assert_array_equal(qkv, expect)  # the fused weight of a shard = its q, k, v slices
        down = materialize(module.params[f"{layer}.mlp.down_proj.weight"], provider, (rank, 2))
        np.testing.assert_array_equal(down, arrays[f"{layer}.mlp.down_proj.weight"][:, 64 * rank:64 * (rank + 1)])
        norm = materialize(module.params["model.norm.weight"], provider, (rank, 2))
        np.testing.assert_array_equal(norm, arrays["model.norm.weight"])
        start = materialize(module.params[VOCAB_START], provider, (rank, 2))
        assert start.tolist() == [160 * rank]


def test_row_bias_is_added_once_after_the_sum():
    module = sharded(2, attention_bias=True)
    text = format_function(module.functions["decode"])
    assert "%o.12.partial: f32[batch, 1, 64] = linear(%11, @model.layers.0.self_attn.o_proj.weight)" in text
    assert ("%o.12: f32[batch, 1, 64] = add(%o.12.sum, @model.layers.0.self_attn.o_proj.bias)" in text)
    assert module.params["model.layers.0.self_attn.o_proj.bias"].type.shape == (64,)
    assert module.params["model.layers.0.self_attn.qkv_proj.bias"].type.shape == (64,)  # (32 + 16 + 16) rows


def test_quantized_shards_keep_whole_groups():
    module = sharded(2, quant="q4f16_1")
    check_quantized_shards(module, "q4f16_1")  # o_proj: 32 columns a shard, down_proj: 64
    assert module.params["lm_head.qweight"].info["scheme"] == "q8f16"  # the head's slice keeps the edge scheme
    with pytest.raises(ConfigError, match=r"--quant q4f16_1 with tensor_parallel 4: model.layers.0.self_attn."
                                          r"o_proj.weight has 16 input features per shard, not a multiple of its "
                                          r"32-value groups"):
        check_quantized_shards(sharded(4, quant="q4f16_1"), "q4f16_1")


def test_refusals_name_the_field_or_parameter():
    for field, value, kv in (("num_attention_heads", 6, 2), ("num_key_value_heads", 2, 2),
                             ("intermediate_size", 90, 4), ("vocab_size", 322, 4)):
        cfg = ModelConfig.from_dict({**BASE, "head_dim": 8, "num_key_value_heads": kv, field: value})
        with pytest.raises(ConfigError, match=rf"config field '{field}' \({value}\) is not divisible by 4"):
            check_divisible(cfg, 4)
    cfg = ModelConfig.from_dict({**BASE, "model_type": "mixtral", "num_local_experts": 4, "num_experts_per_tok": 2})
    with pytest.raises(ConfigError, match="no tensor-parallel rule for parameter model.layers.0.block_sparse_moe"):
        ShardTensorParallel(2)(build_module(cfg, "moe"))


@pytest.mark.parametrize("overrides", [
    {"model_type": "qwen2", "tie_word_embeddings": True},  # q/k/v biases (column), tied head
    {"model_type": "qwen3", "head_dim": 16},  # per-head q/k norms between the projections and rope
    {"model_type": "gemma2", "head_dim": 16, "query_pre_attn_scalar": 16, "sliding_window": 8},  # scaled embedding
])
def test_other_llama_family_graphs_shard_and_verify(overrides):
    module = sharded(4, quant="q8f16", **overrides)  # the pass manager verifies the IR after every pass
    text = format_function(module.functions["decode"])
    assert text.count("all_reduce(") == 5 and text.count("all_gather(") == 1
    assert module.kv_cache.num_kv_heads == 1
