"""Mixed `--quant` recipes: a scheme per weight, as llama.cpp's llama-quantize picks GGUF types for its K-quant mixes.

`q4_k_m` / `q5_k_m` (llama.cpp's Q4_K_M / Q5_K_M for dense models, after `llama_tensor_get_type` in
llama-quant.cpp): the base type everywhere, except
  - the LM head (and a tied embedding table) in q6_k,
  - v_proj and down_proj (experts' down too: Mixtral's w2, llama.cpp's ffn_down_exps) in q6_k in the "more bits"
    layers (the first and last eighth, every third between),
  - a checkpoint's own fused qkv_proj in q5_k (q4_k_m) or q6_k (q5_k_m),
and a weight whose rows are not whole 256-value super blocks falls back as llama.cpp does (q4_k -> q5f16 = Q5_0,
q5_k -> q5f16_1 = Q5_1, q6_k -> q8f16 = Q8_0). With a GGUF file that already holds these types nothing changes;
the recipes matter for `--random-weights` builds of Q4_K_M-shaped models (speed) and name the artifacts.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from ..ir.ops_quant import SUPER_BLOCK

_LAYER = re.compile(r"\.layers\.(\d+)\.")
_FALLBACK = {"q4_k": "q5f16", "q5_k": "q5f16_1", "q6_k": "q8f16"}


@dataclass(frozen=True)
class Recipe:
    name: str
    summary: str
    base: str  # the scheme of most weights
    qkv: str  # a checkpoint's fused qkv_proj

    def scheme_for(self, name: str, cols: int, layers: int, head: bool) -> str:
        """The scheme of weight `name` (HF parameter name) with `cols` input features; `head`: it is the LM head (or
        the embedding table tied to it)."""
        leaf = name.rsplit(".", 2)[-2] if name.count(".") >= 1 else name
        match = _LAYER.search(name)
        scheme = self.base
        if head:
            scheme = "q6_k"
        elif leaf in ("v_proj", "down_proj", "w2") and match is not None and more_bits(int(match.group(1)), layers):
            scheme = "q6_k"
        elif leaf == "qkv_proj":
            scheme = self.qkv
        return scheme if cols % SUPER_BLOCK == 0 else _FALLBACK[scheme]


def more_bits(layer: int, layers: int) -> bool:
    """llama.cpp's use_more_bits: the first and last eighth of the layers, and every third layer between."""
    return layer < layers // 8 or layer >= 7 * layers // 8 or (layer - layers // 8) % 3 == 2


RECIPES: dict[str, Recipe] = {r.name: r for r in (
    Recipe("q4_k_m", "GGUF Q4_K_M's mix: q4_k, with q6_k for the LM head and half of v_proj/down_proj", "q4_k", "q5_k"),
    Recipe("q5_k_m", "GGUF Q5_K_M's mix: q5_k, with q6_k for the LM head and half of v_proj/down_proj", "q5_k", "q6_k"),
)}


def layer_count(names: list[str]) -> int:
    """1 + the largest `.layers.N.` index among parameter names (0 without layers)."""
    found = [int(m.group(1)) for n in names if (m := _LAYER.search(n)) is not None]
    return max(found) + 1 if found else 0
