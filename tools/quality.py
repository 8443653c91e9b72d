"""Quality of ember's weight schemes against a float32 reference: top-1 agreement and mean KL per position.

    # 1. the reference: transformers loads a GGUF (dequantized to float32) and saves it as a safetensors folder
    python tools/quality.py export SmolLM2-135M-Instruct.Q4_1.gguf /tmp/smollm2-f32
    # 2. compile that folder with each scheme, e.g. ember compile --model /tmp/smollm2-f32 --quant q4f16 -o ART
    # 3. score the same English text with each artifact (ember.load(...).score) and with the reference
    python tools/quality.py measure --reference /tmp/smollm2-f32 ART1 ART2 ...

The reference runs in transformers (float32, eager attention); artifacts run through ember's runtime.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

TEXT = (
    "The lighthouse at the end of the harbour had not been lit for almost forty years when Maria decided to climb "
    "its stairs again. She had grown up in the keeper's cottage below it, and every evening her father had carried a "
    "can of oil up the narrow spiral, counting the steps out loud so that she could follow his voice from the "
    "kitchen. There were one hundred and twelve of them. When the coast guard replaced the old lamp with an "
    "automatic beacon on a steel mast, the family moved inland, and the tower was left to the gulls and the wind. "
    "Now the town council wanted to sell it. A developer from the city had offered to turn it into a small hotel "
    "with a glass restaurant at the top, and most people thought that this was a sensible idea. The harbour was "
    "quiet, the fishing fleet had shrunk to a handful of boats, and young people left as soon as they finished "
    "school. A hotel would bring visitors, jobs and perhaps a reason to stay. Maria understood all of this, but she "
    "also remembered how the beam had swept across her bedroom ceiling at night, slow and patient, like someone "
    "checking that everything was still in its place. Before the meeting where the council would vote, she borrowed "
    "the key from the harbour master and went up alone. The paint was peeling, the windows were crusted with salt, "
    "and the great lens was covered in a grey film of dust. She cleaned a small part of the glass with her sleeve "
    "and looked through it at the water. The light of the afternoon broke into long bands of colour across the "
    "floor. She sat down on the top step and began, for the first time in years, to count."
)


def export(gguf_file: Path, out: Path) -> None:
    """transformers' GGUF loader (float32) saved as safetensors, quantizer stripped (oracles.md section 4)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32)
    model.hf_quantizer = None
    del model.config.quantization_config
    model.is_quantized = False
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def compare(reference: np.ndarray, logits: np.ndarray) -> dict[str, float]:
    """Top-1 agreement and KL(reference || artifact) in nats, over every scored position."""
    p, q = log_softmax(reference), log_softmax(logits)
    kl = (np.exp(p) * (p - q)).sum(axis=-1)
    return {"top1": float((reference.argmax(-1) == logits.argmax(-1)).mean()), "kl_mean": float(kl.mean()),
            "kl_max": float(kl.max())}


def weight_bytes(artifact: Path) -> int:
    return sum(f.stat().st_size for f in (artifact / "params").glob("*.safetensors"))


def measure(reference_dir: Path, artifacts: list[Path]) -> list[dict]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import ember

    ids = AutoTokenizer.from_pretrained(reference_dir)(TEXT)["input_ids"]
    model = AutoModelForCausalLM.from_pretrained(reference_dir, dtype=torch.float32, attn_implementation="eager")
    with torch.no_grad():
        reference = model(torch.tensor([ids])).logits[0].numpy()
    rows = []
    for artifact in artifacts:
        manifest = json.loads((artifact / "manifest.json").read_text())
        logits = ember.load(artifact, device="cpu", context_length=1024).score(ids)
        schemes = sorted({p["scheme"] for p in manifest["params"] if p["scheme"]})
        source = Path(manifest.get("source") or "")
        rows.append({"artifact": artifact.name, "quantization": manifest["quantization"], "schemes": schemes,
                     "tokens": len(ids), "weight_MB": weight_bytes(artifact) / 1e6,
                     "weight_bytes": weight_bytes(artifact),
                     "source_bytes": source.stat().st_size if source.is_file() else None,
                     **compare(reference, logits)})
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| artifact | --quant | tensor schemes | weights MB | top-1 agreement | mean KL (nats) | max KL |",
             "|---|---|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['artifact']} | {r['quantization']} | {', '.join(r['schemes'])} | {r['weight_MB']:.1f} | "
                     f"{100 * r['top1']:.1f}% | {r['kl_mean']:.2e} | {r['kl_max']:.2e} |")
    return "\n".join(lines) + (f"\n\n{rows[0]['tokens']} positions of English text." if rows else "")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    exp = sub.add_parser("export", help="save a GGUF's float32 weights (via transformers) as a safetensors folder")
    exp.add_argument("gguf", type=Path)
    exp.add_argument("out", type=Path)
    mea = sub.add_parser("measure", help="top-1 agreement and KL of artifacts against the float32 reference")
    mea.add_argument("--reference", type=Path, required=True, help="float32 Hugging Face folder")
    mea.add_argument("--json", type=Path, help="also write the rows as JSON")
    mea.add_argument("artifacts", type=Path, nargs="+")
    args = parser.parse_args(argv)
    if args.command == "export":
        export(args.gguf, args.out)
        return
    rows = measure(args.reference, args.artifacts)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    print(table(rows))


if __name__ == "__main__":
    main(sys.argv[1:])
