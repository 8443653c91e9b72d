"""Make the committed compatibility artifact `tests/data/compat-v<format>/` (README "Shipping"): a tiny Llama
compiled by `ember compile` for portable x86-64 (EMBER_CPU_MCPU=generic), with a byte-level BPE tokenizer, plus
`expected.json` (greedy tokens of a fixed prompt). tests/runtime/test_compat_artifact.py loads and runs it with
today's runtime. Make a new one only when the format version changes, and keep the previous one while this
runtime still reads its format.

    python tools/make_compat_artifact.py
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "the cat sat on the mat"
MAX_TOKENS = 8


def make_model(folder: Path) -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(14)
    config = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                         bos_token_id=0, eos_token_id=1)
    LlamaForCausalLM(config).save_pretrained(folder)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=96, special_tokens=["<s>", "</s>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet()[:60])
    tok.train_from_iterator(["the cat sat on the mat", "a dog ran in the park", "ship it"] * 20, trainer=trainer)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"add_bos_token": True, "bos_token": "<s>",
                                                              "eos_token": "</s>"}))


def main() -> None:
    sys.path.insert(0, str(ROOT.parent))
    from ember.runtime.artifact import FORMAT_VERSION

    dest = ROOT / "tests" / "data" / f"compat-v{FORMAT_VERSION}"
    with tempfile.TemporaryDirectory() as work:
        hf = Path(work) / "tiny-compat"
        make_model(hf)
        env = {**os.environ, "EMBER_CPU_MCPU": "generic"}
        subprocess.run([sys.executable, "-m", "ember.cli", "compile", "--model", str(hf), "--target", "cpu",
                        "--quant", "q4f16_1", "-o", str(dest / "artifact"), "--force"], env=env, check=True)
    import ember

    engine = ember.load(dest / "artifact")
    result = engine.generate(PROMPT, max_tokens=MAX_TOKENS)
    expected = {"prompt": PROMPT, "max_tokens": MAX_TOKENS, "prompt_ids": engine.encode(PROMPT),
                "token_ids": list(result.token_ids), "text": result.text}
    (dest / "expected.json").write_text(json.dumps(expected, indent=2) + "\n")
    print(json.dumps(expected))


if __name__ == "__main__":
    main()
