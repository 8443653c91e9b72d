"""`ember compile --model model.onnx`: tiny random HF decoders exported with torch.onnx (the default dynamo exporter,
and the TorchScript one; with and without the optimum past/present key-value layout; inline and external data)
compile for cpu, and their logits and greedy tokens match onnxruntime running the same file."""
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

import ember
from ember.compiler import CompileRequest, compile_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "frontend"))
from onnx_export import export  # noqa: E402

ort = pytest.importorskip("onnxruntime")


@dataclass(frozen=True)
class Case:
    family: str
    kwargs: tuple
    cache: bool = False
    external: bool = False
    dynamo: bool = True

    @property
    def config(self):
        from transformers import LlamaConfig, Qwen2Config, Qwen3Config

        cls = {"llama": LlamaConfig, "qwen2": Qwen2Config, "qwen3": Qwen3Config}[self.family]
        return cls(**{"eos_token_id": None, **dict(self.kwargs)})


LLAMA = (("vocab_size", 128), ("hidden_size", 64), ("intermediate_size", 96), ("num_hidden_layers", 2),
         ("num_attention_heads", 4), ("num_key_value_heads", 2), ("rope_theta", 50000.0))
CASES = {
    # GQA 4:2, untied head, every initializer in one external data file
    "llama-gqa-external": Case("llama", LLAMA, external=True),
    # the same model through torch's TorchScript exporter (Constant nodes, a Div for the rsqrt, Casts)
    "llama-torchscript": Case("llama", LLAMA + (("rms_norm_eps", 1e-5),), dynamo=False),
    # qkv bias, tied embeddings, head_dim 8, the optimum layout (past_key_values.N.* in, present.N.* out)
    "qwen2-tied-cache": Case("qwen2", (("vocab_size", 200), ("hidden_size", 64), ("intermediate_size", 128),
                                       ("num_hidden_layers", 2), ("num_attention_heads", 8),
                                       ("num_key_value_heads", 2), ("tie_word_embeddings", True)), cache=True),
    # q/k RMSNorm per head, head_dim 32 != hidden / heads, the optimum layout, external data
    "qwen3-qknorm-cache": Case("qwen3", (("vocab_size", 160), ("hidden_size", 64), ("intermediate_size", 128),
                                         ("num_hidden_layers", 2), ("num_attention_heads", 4),
                                         ("num_key_value_heads", 2), ("head_dim", 32)), cache=True, external=True),
}


def random_hf(case: Case):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_config(case.config, attn_implementation="sdpa").eval()
    with torch.no_grad():  # biases and norm weights away from 0 and 1, so a mixed-up tensor shows
        for name, p in hf.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0, 0.5)
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    return hf


class OrtModel:
    """onnxruntime over the exported file: full-sequence logits, greedy decoding (with the cache when it has one)."""

    def __init__(self, path: Path, case: Case) -> None:
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        cfg = case.config
        self.layers, self.kv = cfg.num_hidden_layers, cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads

    def run(self, ids: list[int], past=None, start: int = 0):
        n = len(ids)
        feed = {"input_ids": np.array([ids], dtype=np.int64),
                "attention_mask": np.ones((1, start + n), dtype=np.int64),
                "position_ids": np.arange(start, start + n, dtype=np.int64)[None]}
        names = [x for x in self.inputs if x.startswith("past_key_values.")]
        for j, name in enumerate(names):
            feed[name] = past[j] if past is not None else np.zeros((1, self.kv, 0, self.head_dim), np.float32)
        out = self.session.run(None, {k: v for k, v in feed.items() if k in self.inputs})
        return out[0][0], (out[1:] if names else None)

    def greedy(self, ids: list[int], steps: int) -> list[int]:
        tokens = list(ids)
        logits, past = self.run(tokens)
        for _ in range(steps):
            tokens.append(int(np.argmax(logits[-1])))
            if past is None:  # no cache in the graph: the full sequence each step
                logits, _ = self.run(tokens)
            else:
                logits, past = self.run(tokens[-1:], past, start=len(tokens) - 1)
        return tokens[len(ids):]


@pytest.fixture(scope="module", params=sorted(CASES))
def compiled(request, tmp_path_factory):
    case = CASES[request.param]
    folder = tmp_path_factory.mktemp(request.param)
    path = export(random_hf(case), folder / "model.onnx", cache=case.cache, external=case.external,
                  dynamo=case.dynamo)
    artifact = compile_model(CompileRequest(model=str(path), target="cpu", output=str(folder / "art")))
    return case, OrtModel(path, case), ember.load(artifact, device="cpu")


def prompt(case, seed=1, n=19):
    return np.random.default_rng(seed).integers(0, case.config.vocab_size, size=n).tolist()


def test_score_matches_onnxruntime_logits(compiled):
    case, ref, engine = compiled
    ids = prompt(case)
    ours = engine.score(ids)
    theirs, _ = ref.run(ids)
    assert ours.shape == theirs.shape
    print(f"max abs diff vs onnxruntime: {np.abs(ours - theirs).max():.3g}")
    np.testing.assert_allclose(ours, theirs, atol=2e-5, rtol=1e-4)


def test_greedy_tokens_match_onnxruntime(compiled):
    case, ref, engine = compiled
    ids = prompt(case, seed=2)
    result = engine.generate(ids, max_tokens=16, temperature=0.0)
    assert result.token_ids == ref.greedy(ids, 16)


def test_the_config_comes_from_the_graph(compiled):
    case, _, engine = compiled
    cfg, hf = engine.manifest.config, case.config
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "rms_norm_eps"):
        assert cfg[key] == pytest.approx(getattr(hf, key)), key
    assert cfg["rope_theta"] == hf.rope_parameters["rope_theta"]
    assert cfg["model_type"] == case.family
    if case.dynamo:  # the dynamo exporter keeps one tensor for a tied head (TorchScript writes a transposed copy)
        assert cfg["tie_word_embeddings"] == hf.tie_word_embeddings
