"""On a GPU box: tiny HF models vs their ember cuda artifacts (runtime-only ember, torch for the reference).

usage: python gpu_parity.py DIR   (DIR holds <case>/hf and <case>/art-f32, <case>/art-f16, made by prepare_gpu.py)
Prints one JSON line per check.
"""
import json
import sys
from pathlib import Path

import numpy as np


def main(root: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    import ember

    for case in sorted(p for p in root.iterdir() if (p / "hf").is_dir()):
        hf = AutoModelForCausalLM.from_pretrained(case / "hf", dtype=torch.float32,
                                                  attn_implementation="eager").cuda().eval()
        spec = json.loads((case / "case.json").read_text())
        ids = np.random.default_rng(1).integers(0, hf.config.vocab_size, size=spec["prompt_len"]).tolist()
        with torch.no_grad():
            ref = hf(torch.tensor([ids]).cuda()).logits[0].float().cpu().numpy()
            ref_gen = hf.generate(torch.tensor([ids]).cuda(), max_new_tokens=32, do_sample=False,
                                  eos_token_id=None, pad_token_id=0)[0, len(ids):].tolist()
        for art, tol in (("art-f32", 1e-4), ("art-f16", 3e-2)):
            engine = ember.load(case / art, device="cuda")
            ours = engine.score(ids)
            err = float(np.abs(ours - ref).max())
            gen = engine.generate(ids, max_tokens=32, temperature=0.0).token_ids
            row = {"case": case.name, "artifact": art, "functions": engine.manifest.functions,
                   "max_abs_logit_err": err, "logit_scale": float(np.abs(ref).max()), "tolerance": tol,
                   "top1_agree": float((ours.argmax(-1) == ref.argmax(-1)).mean()),
                   "greedy32_equal_hf": gen == ref_gen, "ok": err < tol and (art != "art-f32" or gen == ref_gen)}
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
