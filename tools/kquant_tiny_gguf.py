"""Write the tiny Q4_K_M-like llama GGUF of tests/quant/test_e2e_quant.py (random K-quant super blocks, Q5_0/Q5_1
tensors) to a path, for GPU checks: python tools/kquant_tiny_gguf.py OUT.gguf"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "quant"))
from model_fixtures import random_llama, write_gguf  # noqa: E402
from test_e2e_quant import q4_k_m_like  # noqa: E402


def main() -> None:
    out = Path(sys.argv[1])
    model = random_llama(seed=5, hidden_size=256, intermediate_size=512, head_dim=64)
    write_gguf(out, model, q4_k_m_like)
    print(out)


if __name__ == "__main__":
    main()
