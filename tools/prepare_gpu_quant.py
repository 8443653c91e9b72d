"""Here (no GPU): a tiny HF llama compiled with every quantization scheme for cpu, cuda (f32 compute) and cuda
(f16 compute), for gpu_quant_parity.py."""
import subprocess
import sys
from pathlib import Path

import torch

SCHEMES = ("q8f16", "q4f16", "q4f16_1", "q4f16g128")


def main(out: Path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    LlamaForCausalLM(config).save_pretrained(out / "hf")
    builds = {"cpu": ["--target", "cpu"], "cuda-f32": ["--target", "cuda", "--dtype", "float32"],
              "cuda-f16": ["--target", "cuda"]}
    for scheme in SCHEMES:
        for build, extra in builds.items():
            subprocess.run(["ember", "compile", "--model", str(out / "hf"), "--quant", scheme,
                            "-o", str(out / scheme / build), "--force", *extra], check=True, stdout=subprocess.DEVNULL)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
