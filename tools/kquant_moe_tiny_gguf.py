#!/usr/bin/env python3
"""A tiny Mixtral GGUF whose experts are K-quant blocks (layer 0 as Q4_K_M holds them: Q4_K gate/up, Q6_K down;
layer 1 Q5_K), the rest float: the model of tests/e2e/test_moe_parity.py's K-quant case, for the GPU check
(tools/gemv_parity.py build-gguf DIR FILE.gguf kmoe, then check on the GPU against the cpu build).

    PYTHONPATH=. python tools/kquant_moe_tiny_gguf.py OUT.gguf
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from gguf import GGMLQuantizationType as Q

from tests.e2e.test_moe_parity import EXPERT_TYPES, KQUANT_CASE, random_model, write_gguf
from tests.quant.model_fixtures import random_kquant_blocks


def main(out: Path) -> None:
    hf = random_model(KQUANT_CASE)
    config = KQUANT_CASE.config
    experts, inter, hidden = config.num_local_experts, config.intermediate_size, config.hidden_size
    blocks = {}
    for layer, types in EXPERT_TYPES.items():
        for i, (which, ggml_type, (rows, cols)) in enumerate(zip(("gate", "up", "down"), types, (
                (inter, hidden), (inter, hidden), (hidden, inter)))):
            raw = random_kquant_blocks((experts * rows, cols), Q[ggml_type], seed=17 * layer + i)
            blocks[f"blk.{layer}.ffn_{which}_exps.weight"] = (raw.reshape(experts, rows, -1), Q[ggml_type])
    write_gguf(out, KQUANT_CASE, hf, blocks)
    print(f"wrote {out} ({', '.join(f'layer {k}: {v}' for k, v in EXPERT_TYPES.items())})")


if __name__ == "__main__":
    torch.manual_seed(0)
    np.random.seed(0)
    main(Path(sys.argv[1]))
