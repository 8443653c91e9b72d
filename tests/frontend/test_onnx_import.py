"""The ONNX importer without compiling: what it reads at import (nothing of the weights), and the one-line errors
for graphs it does not recognize, broken external data and a config.json that disagrees with the graph."""
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from ember.errors import ModelFormatError
from ember.frontend.source import resolve_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from onnx_export import export  # noqa: E402


def tiny_llama():
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, eos_token_id=None)
    hf = AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    return hf


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny llama exported with external data (TorchScript exporter: the fastest), and its HF model."""
    hf = tiny_llama()
    folder = tmp_path_factory.mktemp("onnx")
    return export(hf, folder / "model.onnx", external=True, dynamo=False), hf


def copy(exported, tmp_path) -> Path:
    src = exported[0]
    for item in src.parent.iterdir():
        shutil.copyfile(item, tmp_path / item.name)
    return tmp_path / src.name


def refused(path: Path) -> str:
    with pytest.raises(ModelFormatError) as info:
        resolve_model(str(path))
    message = str(info.value)
    assert "\n" not in message and str(path.parent) in message, message
    return message


def test_import_reads_the_graph_and_no_weight(exported):
    path, hf = exported
    source = resolve_model(str(path))
    assert source.weights.store._maps == {}  # no external data file mapped yet
    cfg = source.config
    assert (cfg.model_type, cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim,
            cfg.num_hidden_layers, cfg.vocab_size) == ("llama", 32, 4, 2, 8, 2, 96)
    name = "model.layers.1.self_attn.k_proj.weight"
    assert source.weights.header(name) == ((16, 32), "F32")
    state = hf.state_dict()
    for name in source.weights.names():  # HF layout, transposed back from the MatMul's [in, out]
        np.testing.assert_array_equal(source.weights.get(name), state[name].numpy(), err_msg=name)


def test_a_truncated_external_data_file_is_named(exported, tmp_path):
    path = copy(exported, tmp_path)
    data = tmp_path / (path.name + ".data")
    data.write_bytes(data.read_bytes()[:-100])
    message = refused(path)
    assert "truncated external data" in message and str(data) in message


def test_a_missing_external_data_file_is_named(exported, tmp_path):
    path = copy(exported, tmp_path)
    (tmp_path / (path.name + ".data")).unlink()
    assert "external data file" in refused(path)


def test_not_an_onnx_file(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"\xff" * 64)
    assert "not a readable ONNX model" in refused(path)


def _edit(path: Path, change) -> Path:
    model = onnx.load(str(path), load_external_data=False)
    change(model.graph)
    onnx.save(model, str(path))
    return path


def _layer_nodes(graph, layer: int, op: str):
    return [n for n in graph.node if f"layers.{layer}/" in n.name and n.op_type == op]


def test_a_broken_layer_is_named(exported, tmp_path):
    """Layer 1's q projection reads the embedding instead of its norm: the layer no longer has q, k and v."""
    def change(graph):
        q = next(n for n in _layer_nodes(graph, 1, "MatMul") if "q_proj" in n.name)
        embed = next(n for n in graph.node if n.op_type == "Gather" and n.input[1] == "input_ids")
        q.input[0] = embed.output[0]

    message = refused(_edit(copy(exported, tmp_path), change))
    assert "layer 1" in message and "expected three (q, k, v)" in message


def test_a_non_swiglu_mlp_is_named(exported, tmp_path):
    def change(graph):
        _layer_nodes(graph, 0, "Sigmoid")[0].op_type = "Relu"

    message = refused(_edit(copy(exported, tmp_path), change))
    assert "layer 0" in message and "not SwiGLU" in message


def test_a_gpt2_style_layer_norm_is_refused(tmp_path):
    from transformers import AutoModelForCausalLM, GPT2Config

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=2, n_positions=64)
    hf = AutoModelForCausalLM.from_config(cfg).eval()

    class Logits(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.hf = hf

        def forward(self, input_ids):
            return self.hf(input_ids=input_ids, use_cache=False).logits

    model = Logits()
    path = tmp_path / "gpt2.onnx"
    ids = torch.randint(0, 64, (1, 5))
    with torch.no_grad():
        torch.onnx.export(model, (ids,), str(path), input_names=["input_ids"], output_names=["logits"],
                          dynamo=True, dynamic_shapes=({1: torch.export.Dim("seq", max=64)},))
    message = refused(path)
    assert "layer norm" in message and ("LayerNormalization" in message or "mean" in message)


def test_a_config_json_that_disagrees_with_the_graph_is_named(exported, tmp_path):
    path = copy(exported, tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64}))
    message = refused(path)
    assert "config.json" in message and "hidden_size" in message


def test_a_config_json_beside_supplies_what_the_graph_cannot_show(exported, tmp_path):
    path = copy(exported, tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 32,
                                                      "max_position_embeddings": 777, "bos_token_id": 1,
                                                      "eos_token_id": [2, 3]}))
    cfg = resolve_model(str(path)).config
    assert (cfg.max_position_embeddings, cfg.bos_token_id, cfg.eos_token_id) == (777, 1, [2, 3])
