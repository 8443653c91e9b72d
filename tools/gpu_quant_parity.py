"""On a GPU box: each quantization scheme's cuda artifact against its cpu artifact (runtime-only ember).

usage: python gpu_quant_parity.py DIR   (DIR/<scheme>/{cpu,cuda-f32,cuda-f16} made by prepare_gpu_quant.py)
The cpu and cuda-f32 builds share weights and compute dtype, so their logits must agree tightly; cuda-f16 is
checked loosely. Prints one JSON line per scheme.
"""
import json
import sys
from pathlib import Path

import numpy as np

import ember


def main(root: Path) -> None:
    for scheme in sorted(p for p in root.iterdir() if (p / "cpu").is_dir()):
        cpu = ember.load(scheme / "cpu", device="cpu")
        ids = np.random.default_rng(3).integers(0, cpu.manifest.vocab_size, size=40).tolist()
        ref = cpu.score(ids)
        ref_gen = cpu.generate(ids, max_tokens=24, temperature=0.0).token_ids
        row = {"scheme": scheme.name, "logit_scale": float(np.abs(ref).max())}
        for build, tol in (("cuda-f32", 1e-3), ("cuda-f16", 5e-2)):
            engine = ember.load(scheme / build, device="cuda")
            ours = engine.score(ids)
            gen = engine.generate(ids, max_tokens=24, temperature=0.0).token_ids
            row[build] = {"max_abs_err_vs_cpu": float(np.abs(ours - ref).max()),
                          "top1_agree": float((ours.argmax(-1) == ref.argmax(-1)).mean()),
                          "greedy24_equal_cpu": gen == ref_gen, "tolerance": tol,
                          "ok": float(np.abs(ours - ref).max()) < tol}
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
