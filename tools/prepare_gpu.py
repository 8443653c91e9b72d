"""Here (no GPU): save the tiny HF test models and compile each for cuda in f32 and f16, for gpu_parity.py."""
import json
import subprocess
import sys
from pathlib import Path

import torch


def main(out: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "e2e"))
    from test_hf_parity import CASES
    from transformers import AutoModelForCausalLM

    for name, case in CASES.items():
        folder = out / name
        torch.manual_seed(0)
        hf = AutoModelForCausalLM.from_config(case.config)
        with torch.no_grad():
            for pname, p in hf.named_parameters():
                if pname.endswith(".bias"):
                    p.normal_(0, 0.5)
        hf.save_pretrained(folder / "hf")
        (folder / "case.json").write_text(json.dumps({"prompt_len": case.prompt_len}))
        for art, extra in (("art-f32", ["--quant", "q0f32", "--dtype", "float32"]), ("art-f16", [])):
            subprocess.run(["ember", "compile", "--model", str(folder / "hf"), "--target", "cuda",
                            "-o", str(folder / art), "--force", *extra], check=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
