"""Peer for `ember bench`: Hugging Face transformers on the same config with random weights.

Run only as a subprocess (`python -m ember.runtime.peer_hf ...`): it imports torch, which an ember runtime
process never does. Prints one JSON row per metric, in the format of `bench.BenchResult.rows`.
"""
from __future__ import annotations

import argparse
import json
import time


EMBER_ONLY_KEYS = ("model_type", "qkv_bias", "o_bias")  # the rest of a manifest's config is Hugging Face's keys
INTEGER_KEYS = ("query_pre_attn_scalar",)  # ember keeps it a float; transformers' config validates an int
PEER_MAX_POSITIONS = 8192  # the peer's rope tables and masks: no benchmark here goes past it


def hf_config_kwargs(raw: dict) -> dict:
    """The Hugging Face config keys of an artifact's model config (ember's architecture files keep HF's names, so
    experts, windows, soft-caps, q/k norms and rope scaling reach the peer as the artifact has them)."""
    kwargs = {k: v for k, v in raw.items() if k not in EMBER_ONLY_KEYS and v is not None}
    for key in INTEGER_KEYS:
        if isinstance(kwargs.get(key), float) and kwargs[key].is_integer():
            kwargs[key] = int(kwargs[key])
    kwargs["max_position_embeddings"] = min(raw["max_position_embeddings"], PEER_MAX_POSITIONS)
    return kwargs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True, help="the artifact's model config (JSON)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--prefill", default="512")
    parser.add_argument("--steps", type=int, default=256)
    parser.add_argument("--mode", default="eager", choices=["eager", "compile"])
    args = parser.parse_args()

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    raw = json.loads(args.config)
    kind = raw["model_type"]  # ember's model types are Hugging Face's
    hf_keys = hf_config_kwargs(raw)
    device = "cuda" if args.device.startswith("cuda") else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    torch.manual_seed(0)
    torch.set_default_dtype(dtype)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(kind, **hf_keys)).eval()
    base = {"engine": f"hf-transformers-{args.mode}", "model": raw["model_type"], "quant": str(dtype).split(".")[-1],
            "device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "weights": "random"}
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def forward_time(n: int) -> float:
        ids = torch.randint(0, raw["vocab_size"], (1, n), device=device)
        best = float("inf")
        for _ in range(4):
            sync()
            start = time.perf_counter()
            with torch.no_grad():
                model(ids, logits_to_keep=1)
            sync()
            best = min(best, time.perf_counter() - start)
        return best

    for n in [int(x) for x in args.prefill.split(",") if x]:
        print(json.dumps({**base, "metric": f"prefill_pp{n}_tok_s", "value": round(n / forward_time(n), 1)}),
              flush=True)
    print(json.dumps({**base, "metric": "ttft_128_ms", "value": round(forward_time(128) * 1e3, 2)}), flush=True)

    prompt = torch.randint(0, raw["vocab_size"], (1, 128), device=device)
    extra = {"cache_implementation": "static"} if args.mode == "compile" else {}

    def generate(n: int) -> float:
        sync()
        start = time.perf_counter()
        with torch.no_grad():
            model.generate(prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False, **extra)
        sync()
        return time.perf_counter() - start

    generate(8)
    t1, tn = generate(1), generate(args.steps)
    print(json.dumps({**base, "metric": "decode_b1_tok_s", "value": round((args.steps - 1) / (tn - t1), 1)}),
          flush=True)


if __name__ == "__main__":
    main()
