#!/usr/bin/env python3
"""ember's cuda kernels inside whole models (GEMV at decode1, low-batch GEMM at batched decode, add+RMSNorm,
decode attention) and CUDA graphs, against the cpu build of the same model and weights.

Here:   python tools/gemv_parity.py build DIR [SCHEME,...|""] [MODEL,...]
        tiny HF models (a llama, a qwen2 for the qkv bias, a mistral for the sliding window, a Gemma 2 and a Gemma 3
        for head dim 256, per-layer windows and soft-capping), each compiled for
        cpu, for cuda (ember's GEMV at decode1) and for cuda with EMBER_CUDA_GEMV=0 (dlight's GEMV, as before),
        per scheme (4-bit, and q0f16 for the fp16-weight kernels of native_linear.py), or only the schemes named.
Here:   python tools/gemv_parity.py build-gguf DIR FILE.gguf [LABEL]
        one GGUF compiled with its own tensor types (K-quants kept native: tools/kquant_tiny_gguf.py writes a
        tiny Q4_K_M-like one), the same four builds, under DIR/llama/LABEL.
On the GPU (runtime-only ember):  python tools/gemv_parity.py check DIR
        the same prompt prefilled in every build, then 24 decode1 steps fed the cpu build's greedy tokens; the
        logits of every step are compared (max abs error over the logit scale, top-1 agreement) and greedy
        generation of 24 tokens is compared; then 4 sequences (other prompts) decode together for 12 steps (the
        batched `decode`), fed the cpu build's batched greedy tokens, logits compared the same way. "cuda-graph"
        (--cuda-graph) must give the logits of "cuda" (no graphs). A 100-token prompt scored in chunks of 16 on "cuda"
        (the later chunks attend the cached pages) is compared with the cpu build's one-pass scores. One JSON line
        per (model, scheme); exit 1 if a check fails.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

MODELS = {  # name -> (transformers config class, kwargs, schemes)
    "llama": ("LlamaConfig", {"vocab_size": 256, "hidden_size": 256, "intermediate_size": 704,
                              "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2},
              ("q4f16", "q4f16_1", "q4f16g128", "q0f16")),
    "qwen2": ("Qwen2Config", {"vocab_size": 256, "hidden_size": 256, "intermediate_size": 416,
                              "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                              "tie_word_embeddings": True}, ("q4f16_1", "q0f16")),
    # a 12-token sliding window, shorter than every prompt here but two: the kernels' window mask (cpu and cuda)
    "mistral": ("MistralConfig", {"vocab_size": 256, "hidden_size": 256, "intermediate_size": 416,
                                  "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 1,
                                  "sliding_window": 12, "head_dim": 64}, ("q4f16_1", "q0f16")),
    # 8-bit weights at batch 2-64 where K is 4x and 2x N (o: 1024 -> 256, down: 512 -> 256), head dim 256
    "llama_q8": ("LlamaConfig", {"vocab_size": 256, "hidden_size": 256, "intermediate_size": 512,
                                 "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                                 "head_dim": 256}, ("q8f16",)),
    # head dim 256, a 12-token window on every other layer (sm_scale's sign), scores soft-capped tightly enough to
    # bend them (larger weights), final logit soft-capping; Gemma 3: local / global layers with two rope bases,
    # q/k norms, GQA group 4. gemma2 q8f16: 8-bit o (K = 4N) and down beside these attention kernels, the shape of
    # the build that faulted once in batched decode (session 13)
    "gemma2": ("Gemma2Config", {"vocab_size": 256, "hidden_size": 256, "intermediate_size": 512,
                                "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
                                "head_dim": 256, "query_pre_attn_scalar": 256, "sliding_window": 12,
                                "attn_logit_softcapping": 1.0, "final_logit_softcapping": 3.0,
                                "initializer_range": 0.1}, ("q4f16_1", "q0f16", "q8f16")),
    "gemma3": ("Gemma3TextConfig", {"vocab_size": 256, "hidden_size": 256, "intermediate_size": 512,
                                    "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 1,
                                    "head_dim": 256, "query_pre_attn_scalar": 256, "sliding_window": 12,
                                    "layer_types": ["sliding_attention", "sliding_attention", "full_attention"],
                                    "rope_parameters": {"full_attention": {"rope_type": "linear", "factor": 2.0,
                                                                           "rope_theta": 1e6},
                                                        "sliding_attention": {"rope_type": "default",
                                                                              "rope_theta": 1e4}}},
               ("q4f16_1", "q0f16")),
    # Phi-3: fused qkv / gate_up in the checkpoint, head dim 96 (TVM's attention kernels on cuda), partial rotary
    "phi3": ("Phi3Config", {"vocab_size": 256, "hidden_size": 384, "intermediate_size": 512,
                            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                            "partial_rotary_factor": 0.75, "pad_token_id": 0}, ("q4f16_1", "q0f16")),
    # LongRoPE (Phi-3-mini-128k's scaling) with partial rotary: 36 factor pairs, the short ones within 32 positions,
    # the long ones past them (the 33- and 100-token prompts), cos/sin times sqrt(1 + ln(256 / 32) / ln(32))
    "phi3_longrope": ("Phi3Config", {"vocab_size": 256, "hidden_size": 384, "intermediate_size": 512,
                                     "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                                     "partial_rotary_factor": 0.75, "pad_token_id": 0,
                                     "max_position_embeddings": 256, "original_max_position_embeddings": 32,
                                     "rope_scaling": {"type": "longrope",
                                                      "short_factor": [1.0 + 0.05 * i for i in range(36)],
                                                      "long_factor": [1.0 + 0.9 * i for i in range(36)]}},
                      ("q4f16_1",)),
    # mixture-of-experts blocks (kernels/moe.cuh): 4 experts top 2; 8 experts top 3 renormalized, one dense layer
    "mixtral": ("MixtralConfig", {"vocab_size": 256, "hidden_size": 256, "intermediate_size": 384,
                                  "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                                  "num_local_experts": 4, "num_experts_per_tok": 2}, ("q4f16", "q4f16_1", "q0f16")),
    "qwen3_moe": ("Qwen3MoeConfig", {"vocab_size": 256, "hidden_size": 256, "intermediate_size": 384,
                                     "moe_intermediate_size": 128, "num_hidden_layers": 3, "num_attention_heads": 4,
                                     "num_key_value_heads": 2, "head_dim": 64, "num_experts": 8,
                                     "num_experts_per_tok": 3, "norm_topk_prob": True, "mlp_only_layers": [1]},
                  ("q4f16", "q8f16", "q0f16")),
}
BUILDS = {"cpu": (["--target", "cpu"], {}), "cuda": (["--target", "cuda:sm_90", "--no-cuda-graph"], {}),
          "cuda-graph": (["--target", "cuda:sm_90", "--cuda-graph"], {}),
          "cuda-stock": (["--target", "cuda:sm_90", "--no-cuda-graph"], {"EMBER_CUDA_GEMV": "0", "EMBER_CUDA_NORM": "0"})}
STEPS = 24
CHUNKED_LEN, CHUNK = 100, 16  # a prompt scored in chunks (the paged prefill attention), against the cpu's one pass
BATCH, BATCH_STEPS = 4, 12
# cuda computes in fp16, cpu in fp32: logits differ by fp16 rounding through 2 layers. Against the cpu build the
# bound is loose; against the stock cuda build (same fp16 pipeline, only the GEMV differs) it is tighter.
TOL_CPU, TOL_STOCK = 5e-2, 2e-2


def build(root: Path, only: set[str] | None = None, models: set[str] | None = None) -> None:
    import torch
    import transformers

    for model, (cls, kwargs, schemes) in MODELS.items():
        if models and model not in models:
            continue
        torch.manual_seed(1)
        config = getattr(transformers, cls)(**kwargs)
        hf = transformers.AutoModelForCausalLM.from_config(config)
        with torch.no_grad():  # qwen2's biases start at zero: give them values so that the bias path is tested
            for name, p in hf.named_parameters():
                if name.endswith(".bias"):
                    p.normal_(0, 0.5)
                if name.endswith("mlp.gate.weight") and p.ndim == 2 and "experts" not in name:
                    p.normal_(0, 0.5)  # a MoE router: decisive routing, so fp16 rounding does not flip experts
        hf.save_pretrained(root / model / "hf")
        for scheme in schemes:
            if only and scheme not in only:
                continue
            for name, (args, env) in BUILDS.items():
                if name not in _wanted_builds():
                    continue
                out = root / model / scheme / name
                subprocess.run(["ember", "compile", "--model", str(root / model / "hf"), "--quant", scheme, "-o",
                                str(out), "--force", *args], check=True, stdout=subprocess.DEVNULL,
                               env={**os.environ, **env})
                print(f"built {out}", flush=True)


def _wanted_builds() -> set[str]:
    """PARITY_BUILDS=cpu,cuda,... builds only those (a smaller kit: `check` skips a missing cuda-graph/stock)."""
    names = os.environ.get("PARITY_BUILDS", "")
    return set(names.split(",")) if names else set(BUILDS)


def build_gguf(root: Path, gguf: Path, label: str = "gguf") -> None:
    """The builds of one GGUF file compiled with its own tensor types (no --quant: K-quants, Q5_0/Q5_1 kept
    native), under root/llama/<label>/ so that `check` finds them: cpu (the reference: bit-exact gguf values, f32),
    cuda (kgemv.cuh at decode1, dlight's inlined dequant for batched decode and prefill), cuda-graph, cuda-stock
    (EMBER_CUDA_GEMV=0: dlight's decode1 GEMV on the same fp16 pipeline, an A/B of the kernel alone)."""
    for name, (args, env) in BUILDS.items():
        out = root / "llama" / label / name
        subprocess.run(["ember", "compile", "--model", str(gguf), "-o", str(out), "--force", *args], check=True,
                       stdout=subprocess.DEVNULL, env={**os.environ, **env})
        print(f"built {out}", flush=True)


def _steps(engine, prompt: list[int], tokens: list[int]):
    import numpy as np

    runner = engine.runner
    runner.reset()
    runner.add_sequence(0)
    logits = [runner.prefill([0], [prompt])[0]]
    for t in tokens[:-1]:
        logits.append(runner.decode([0], [t])[0].copy())
    runner.reset()
    return np.stack(logits)


def _batched_steps(engine, prompts: list[list[int]], tokens: list[list[int]]):
    """Logits [step, seq, vocab]: the prefill's, then BATCH_STEPS - 1 batched decodes fed `tokens`."""
    import numpy as np

    runner = engine.runner
    runner.reset()
    seqs = list(range(len(prompts)))
    for s in seqs:
        runner.add_sequence(s)
    logits = [runner.prefill(seqs, prompts)]
    for step in range(BATCH_STEPS - 1):
        logits.append(runner.decode(seqs, [t[step] for t in tokens]).copy())
    runner.reset()
    return np.stack(logits)


def _batched_reference(cpu, prompts: list[list[int]]):
    """The cpu build's batched greedy tokens and logits."""
    import numpy as np

    runner = cpu.runner
    runner.reset()
    seqs = list(range(len(prompts)))
    for s in seqs:
        runner.add_sequence(s)
    logits = [runner.prefill(seqs, prompts)]
    tokens = []
    for _ in range(BATCH_STEPS - 1):
        step = [int(t) for t in logits[-1].argmax(-1)]
        tokens.append(step)
        logits.append(runner.decode(seqs, step).copy())
    runner.reset()
    return np.stack(logits), [list(col) for col in zip(*tokens)]


def check(root: Path) -> int:
    import numpy as np

    import ember

    failed = 0
    for model in MODELS:
        if not (root / model).is_dir():  # a build folder carried without some models
            continue
        for scheme_dir in sorted(p for p in (root / model).iterdir() if (p / "cpu").is_dir()):
            cpu = ember.load(scheme_dir / "cpu", device="cpu", max_batch_size=BATCH)
            rng = np.random.default_rng(7)
            prompt = rng.integers(0, cpu.manifest.vocab_size, size=20).tolist()
            prompts = [rng.integers(0, cpu.manifest.vocab_size, size=n).tolist() for n in (5, 17, 33, 9)]
            batch_ref, batch_tokens = _batched_reference(cpu, prompts)
            greedy = cpu.generate(prompt, max_tokens=STEPS, temperature=0.0).token_ids
            ref = _steps(cpu, prompt, greedy)
            long_prompt = rng.integers(0, cpu.manifest.vocab_size, size=CHUNKED_LEN).tolist()
            long_ref = cpu.score(long_prompt)
            scale = float(np.abs(ref).max())
            row: dict = {"model": model, "scheme": scheme_dir.name, "logit_scale": scale,
                         "sliding_window": cpu.manifest.kv_cache.sliding_window,
                         "window_in_kernels": cpu.manifest.kv_cache.window_in_kernels}
            logits = {}
            for build in ("cuda", "cuda-graph", "cuda-stock"):
                if not (scheme_dir / build).is_dir():
                    continue
                engine = ember.load(scheme_dir / build, device="cuda", max_batch_size=BATCH)
                assert engine.runner._decode1 is not None, "decode1 missing"
                logits[build] = _steps(engine, prompt, greedy)
                gen = engine.generate(prompt, max_tokens=STEPS, temperature=0.0).token_ids
                row[build] = {"decode_max_err_vs_cpu": float(np.abs(logits[build][1:] - ref[1:]).max() / scale),
                              "prefill_max_err_vs_cpu": float(np.abs(logits[build][0] - ref[0]).max() / scale),
                              "top1_agree": float((logits[build].argmax(-1) == ref.argmax(-1)).mean()),
                              "greedy_equal_cpu": gen == greedy}
                batched = _batched_steps(engine, prompts, batch_tokens)
                logits[build + "-batched"] = batched
                row[build]["batched_decode_max_err_vs_cpu"] = float(np.abs(batched[1:] - batch_ref[1:]).max() / scale)
                row[build]["batched_top1_agree"] = float((batched.argmax(-1) == batch_ref.argmax(-1)).mean())
                if build == "cuda":  # chunks of 16: every chunk after the first attends its cached pages
                    chunked = ember.load(scheme_dir / build, device="cuda", prefill_chunk_size=CHUNK).score(long_prompt)
                    row[build]["chunked_prefill_max_err_vs_cpu"] = float(np.abs(chunked - long_ref).max() / scale)
                    # one pass over the long prompt (MoE: enough rows per expert for the grouped GEMM's large tile)
                    whole = engine.score(long_prompt)
                    row[build]["long_prefill_max_err_vs_cpu"] = float(np.abs(whole - long_ref).max() / scale)
                    row[build]["long_prefill_top1_agree"] = float((whole.argmax(-1) == long_ref.argmax(-1)).mean())
            if "cuda-graph" in logits:
                row["graph_max_err_vs_cuda"] = float(max(np.abs(logits["cuda-graph"] - logits["cuda"]).max(),
                                                         np.abs(logits["cuda-graph-batched"] - logits["cuda-batched"]).max())
                                                     / scale)
            vs_stock = 0.0  # a folder carried without the stock build (to save space) skips this comparison
            if "cuda-stock" in logits:
                vs_stock = float(np.abs(logits["cuda"][1:] - logits["cuda-stock"][1:]).max() / scale)
                row["decode_max_err_vs_stock"] = vs_stock
            row["ok"] = bool(row["cuda"]["decode_max_err_vs_cpu"] < TOL_CPU and vs_stock < TOL_STOCK
                             and row["cuda"]["prefill_max_err_vs_cpu"] < TOL_CPU
                             and row["cuda"]["chunked_prefill_max_err_vs_cpu"] < TOL_CPU
                             and row["cuda"]["long_prefill_max_err_vs_cpu"] < TOL_CPU
                             and row["cuda"]["batched_decode_max_err_vs_cpu"] < TOL_CPU
                             and row.get("graph_max_err_vs_cuda", 0.0) < 1e-6)
            failed += not row["ok"]
            print(json.dumps(row), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["build"]:
        build(Path(sys.argv[2]), set(sys.argv[3].split(",")) if len(sys.argv) > 3 and sys.argv[3] else None,
              set(sys.argv[4].split(",")) if len(sys.argv) > 4 else None)
    elif sys.argv[1:2] == ["build-gguf"]:  # build-gguf DIR FILE.gguf [LABEL]
        build_gguf(Path(sys.argv[2]), Path(sys.argv[3]), *(sys.argv[4:5]))
    elif sys.argv[1:2] == ["check"]:
        sys.exit(check(Path(sys.argv[2])))
    else:
        sys.exit(__doc__)
