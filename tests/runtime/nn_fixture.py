"""Test-only: compile a tiny Llama with `tvm.relax.frontend.nn` (llvm, fp32) into a real ember artifact.

It follows the DESIGN.md contract by hand so the runtime can be tested before ember's compiler lands:
`create_kv(5 x ShapeTuple)`, `prefill(ids[1,T], logit_pos[n], kv, params)`, `decode(ids[B,1], kv, params)`,
all weights packed in one tuple, fp32 logits, `TIRPagedKVCache` with `RopeMode.NORMAL` (the cache rotates q/k).
Weights are copied from a random Hugging Face `LlamaForCausalLM` (or `MistralForCausalLM` when a sliding window
is asked for), which the tests then use as the oracle. This module imports tvm.relax and torch: never import it
from a process that checks runtime-only loading.
"""
from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

VOCAB_SIZE = 320
CONTEXT_LENGTH = 64
PAGE_SIZE = 16
BOS, EOS, PAD = "<s>", "</s>", "<pad>"
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] not in ['system', 'user', 'assistant'] %}{{ raise_exception('bad role ' + m['role']) }}{% endif %}"
    "<|{{ m['role'] }}|>{{ m['content'] | trim }}{{ eos_token }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "ember compiles language models ahead of time with apache tvm",
    "a paged key value cache stores attention state in fixed size pages",
    "café naïve résumé déjà vu crème brûlée",
    "snowman ☃ heart ❤ rocket 🚀 smile 😀",
    "hello world, hello ember; tokens and logits and sampling",
]


@dataclass
class TinyArtifact:
    path: Path
    hf_model: Any  # transformers model in eval mode, fp32
    tokenizer_file: Path


def hf_logits(model, ids: list[int]) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


def hf_greedy(model, ids: list[int], n: int) -> list[int]:
    """HF generate(do_sample=False) new tokens, cut before the first EOS (ember does not return the stop token)."""
    import torch

    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, min_new_tokens=0)
    new = out[0, len(ids) :].tolist()
    eos = model.generation_config.eos_token_id
    eos = {eos} if isinstance(eos, int) else set(eos or [])
    for i, t in enumerate(new):
        if t in eos:
            return new[:i]
    return new


def build_tokenizer(path: Path) -> Any:
    """A byte-level BPE over a tiny corpus, exactly VOCAB_SIZE entries (so multi-byte characters span tokens)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=[BOS, EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    assert tok.get_vocab_size() <= VOCAB_SIZE, tok.get_vocab_size()
    tok.save(str(path))
    return tok


def build_hf_model(vocab: int, sliding_window: int | None, seed: int = 0) -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

    torch.manual_seed(seed)
    common = dict(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=CONTEXT_LENGTH,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
        attn_implementation="eager",
    )
    if sliding_window is None:
        model = LlamaForCausalLM(LlamaConfig(**common))
    else:
        model = MistralForCausalLM(MistralConfig(**common, sliding_window=sliding_window, head_dim=16))
    # Random init gives tiny logits; widen the weights a little so greedy choices are well separated.
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.mul_(4.0)
    return model.float().eval()


def _nn_model(cfg: Any, target: Any, with_decode1: bool = False) -> Any:
    from tvm import relax
    from tvm.relax.frontend import nn
    from tvm.relax.frontend.nn import op
    from tvm.relax.frontend.nn.llm.kv_cache import PagedKVCache, RopeMode, TIRPagedKVCache

    H, KVH, hidden = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.hidden_size
    D = hidden // H
    L = cfg.num_hidden_layers
    eps = cfg.rms_norm_eps
    theta = cfg.rope_parameters["rope_theta"]

    class Attention(nn.Module):
        def __init__(self) -> None:
            self.qkv_proj = nn.Linear(hidden, (H + 2 * KVH) * D, bias=False, dtype="float32")
            self.o_proj = nn.Linear(H * D, hidden, bias=False, dtype="float32")

        def forward(self, x: nn.Tensor, kv: PagedKVCache, layer_id: int) -> nn.Tensor:
            b, s, _ = x.shape
            qkv = op.reshape(self.qkv_proj(x), (b, s, H + 2 * KVH, D))
            o = kv.attention_with_fused_qkv(layer_id, qkv, H, sm_scale=D**-0.5)
            return self.o_proj(op.reshape(o, (b, s, H * D)))

    class MLP(nn.Module):
        def __init__(self) -> None:
            inter = cfg.intermediate_size
            self.gate_proj = nn.Linear(hidden, inter, bias=False, dtype="float32")
            self.up_proj = nn.Linear(hidden, inter, bias=False, dtype="float32")
            self.down_proj = nn.Linear(inter, hidden, bias=False, dtype="float32")

        def forward(self, x: nn.Tensor) -> nn.Tensor:
            return self.down_proj(op.silu(self.gate_proj(x)) * self.up_proj(x))

    class Layer(nn.Module):
        def __init__(self) -> None:
            self.input_layernorm = nn.RMSNorm(hidden, -1, eps, bias=False, dtype="float32")
            self.self_attn = Attention()
            self.post_attention_layernorm = nn.RMSNorm(hidden, -1, eps, bias=False, dtype="float32")
            self.mlp = MLP()

        def forward(self, x: nn.Tensor, kv: PagedKVCache, layer_id: int) -> nn.Tensor:
            x = x + self.self_attn(self.input_layernorm(x), kv, layer_id)
            return x + self.mlp(self.post_attention_layernorm(x))

    class Body(nn.Module):
        def __init__(self) -> None:
            self.embed_tokens = nn.Embedding(cfg.vocab_size, hidden, dtype="float32")
            self.layers = nn.ModuleList([Layer() for _ in range(L)])
            self.norm = nn.RMSNorm(hidden, -1, eps, bias=False, dtype="float32")

        def forward(self, ids: nn.Tensor, kv: PagedKVCache) -> nn.Tensor:
            x = self.embed_tokens(ids)
            for i, layer in enumerate(self.layers):
                x = layer(x, kv, i)
            return self.norm(x)

    class TinyLlama(nn.Module):
        def __init__(self) -> None:
            self.model = Body()
            self.lm_head = nn.Linear(hidden, cfg.vocab_size, bias=False, dtype="float32")

        def prefill(self, ids: nn.Tensor, logit_pos: nn.Tensor, kv: PagedKVCache):
            h = op.take(self.model(ids, kv), logit_pos, axis=1)
            return op.astype(self.lm_head(h), "float32"), kv

        def decode(self, ids: nn.Tensor, kv: PagedKVCache):
            return op.astype(self.lm_head(self.model(ids, kv)), "float32"), kv

        def decode1(self, ids: nn.Tensor, kv: PagedKVCache):
            return self.decode(ids, kv)

        def create_kv(self, max_batch_size, max_total_seq_len, prefill_chunk_size, page_size, support_sliding_window):
            return TIRPagedKVCache(
                attn_kind="mha",
                max_batch_size=max_batch_size,
                max_total_seq_len=max_total_seq_len,
                prefill_chunk_size=prefill_chunk_size,
                page_size=page_size,
                support_sliding_window=support_sliding_window,
                layer_partition=relax.ShapeExpr([0, L]),
                num_hidden_layers=L,
                num_attention_heads=H,
                num_key_value_heads=KVH,
                qk_head_dim=D,
                v_head_dim=D,
                mla_original_qk_head_dim=0,
                mla_original_v_head_dim=0,
                rope_mode=RopeMode.NORMAL,
                rope_scale=1,
                rope_theta=theta,
                rope_scaling={},
                rope_ext_factors=relax.prim_value(0),
                rotary_dim=D,
                enable_disaggregation=False,
                dtype="float32",
                target=target,
            )

    packed = {"param_mode": "packed", "effect_mode": "none"}
    kv_spec = nn.spec.Object(object_type=PagedKVCache)
    spec = {
        "prefill": {
            "ids": nn.spec.Tensor([1, "total_len"], "int32"),
            "logit_pos": nn.spec.Tensor(["n_out"], "int32"),
            "kv": kv_spec,
            "$": packed,
        },
        "decode": {"ids": nn.spec.Tensor(["batch", 1], "int32"), "kv": kv_spec, "$": packed},
        **({"decode1": {"ids": nn.spec.Tensor([1, 1], "int32"), "kv": kv_spec, "$": packed}} if with_decode1 else {}),
        "create_kv": {
            k: int
            for k in (
                "max_batch_size", "max_total_seq_len", "prefill_chunk_size", "page_size", "support_sliding_window"
            )
        }
        | {"$": {"param_mode": "none", "effect_mode": "none"}},
    }
    return TinyLlama(), spec


def _packed_weights(hf_model: Any, names: list[str]) -> dict[str, np.ndarray]:
    """HF state dict -> the nn model's parameter names (q, k, v concatenated into qkv_proj)."""
    sd = {k: v.detach().numpy().astype(np.float32) for k, v in hf_model.state_dict().items()}
    out: dict[str, np.ndarray] = {}
    for name in names:
        if ".qkv_proj." in name:
            pre = name.replace("qkv_proj.weight", "")
            out[name] = np.concatenate([sd[pre + p + "_proj.weight"] for p in "qkv"])
        else:
            out[name] = sd[name]
    return out


def build_artifact(
    dest: Path, *, sliding_window: int | None = None, name: str = "tiny-llama", cuda_arch: str | None = None
) -> TinyArtifact:
    """cuda_arch (e.g. "sm_90") builds for CUDA instead of llvm, with a static `decode1`; the caller must make TVM
    compile kernels at build time (a driver, or the stub driver + TVM_CUDA_COMPILE_MODE=nvcc, guide tvm-core §3)."""
    import tvm
    from safetensors.numpy import save_file

    from ember.runtime.artifact import (
        LIBRARY_FILE,
        PARAMS_DIR,
        TOKENIZER_FILE,
        WEIGHTS_PACKED,
        ArtifactWriter,
        KVCacheInfo,
        Manifest,
        ParamInfo,
        TargetInfo,
        TokenizerInfo,
    )

    dest = Path(dest)
    if cuda_arch is None:
        target = tvm.target.Target({"kind": "llvm"})
        target_info = TargetInfo(kind="cpu", archs=[], host=f"{platform.machine()}-unknown-linux-gnu")
    else:
        target = tvm.target.Target({"kind": "cuda", "arch": cuda_arch}, host={"kind": "llvm"})
        target_info = TargetInfo(kind="cuda", archs=[cuda_arch], host=f"{platform.machine()}-unknown-linux-gnu")
    with ArtifactWriter(dest) as writer:
        tok = build_tokenizer(writer.path / TOKENIZER_FILE)
        hf = build_hf_model(VOCAB_SIZE, sliding_window)
        cfg = hf.config
        model, spec = _nn_model(cfg, target, with_decode1=cuda_arch is not None)
        mod, named_params = model.export_tvm(spec=spec)
        with target:  # the nvcc hook reads the arch from the current target
            exe = tvm.compile(mod, target=target)
        exe.export_library(str(writer.path / LIBRARY_FILE))

        names = [n for n, _ in named_params]
        weights = _packed_weights(hf, names)
        # Two shards, to exercise the per-file lookup.
        (writer.path / PARAMS_DIR).mkdir()
        shard_of = {n: f"{PARAMS_DIR}/shard-{0 if i < len(names) // 2 else 1}.safetensors" for i, n in enumerate(names)}
        for shard in sorted(set(shard_of.values())):
            save_file({n: weights[n] for n in names if shard_of[n] == shard}, str(writer.path / shard))
        params = [
            ParamInfo(name=n, shape=list(p.shape), dtype=p.dtype, file=shard_of[n]) for n, p in named_params
        ]
        for p in params:
            assert tuple(p.shape) == weights[p.name].shape, p.name

        head_dim = cfg.hidden_size // cfg.num_attention_heads
        manifest = Manifest(
            name=name,
            architecture="mistral" if sliding_window else "llama",
            config=cfg.to_dict(),
            quantization="q0f32",
            compute_dtype="float32",
            target=target_info,
            kv_cache=KVCacheInfo(
                num_layers=cfg.num_hidden_layers,
                num_attention_heads=cfg.num_attention_heads,
                num_kv_heads=cfg.num_key_value_heads,
                head_dim=head_dim,
                dtype="float32",
                sliding_window=sliding_window,
                page_size=PAGE_SIZE,
            ),
            vocab_size=VOCAB_SIZE,
            context_length=CONTEXT_LENGTH,
            functions=["create_kv", "prefill", "decode"] + (["decode1"] if cuda_arch else []),
            params=params,
            weights=WEIGHTS_PACKED,
            tokenizer=TokenizerInfo(
                file=TOKENIZER_FILE,
                bos_token_id=tok.token_to_id(BOS),
                eos_token_ids=[tok.token_to_id(EOS)],
                add_bos_token=True,
                chat_template=CHAT_TEMPLATE,
            ),
            passes=[],
            versions={"apache-tvm": tvm.__version__},
        )
        path = writer.commit(manifest)
    return TinyArtifact(path=path, hf_model=hf, tokenizer_file=path / TOKENIZER_FILE)
