"""Rotary embedding frequencies (default, llama3, linear, yarn and longrope scaling), computed as Hugging Face does."""
from __future__ import annotations

import math
from typing import Any

import numpy as np


def inverse_frequencies(theta: float, rotary_dim: int, scaling: dict[str, Any] | None) -> np.ndarray:
    exponents = np.arange(0, rotary_dim, 2, dtype=np.int64).astype(np.float32) / rotary_dim
    inv = (1.0 / (np.float32(theta) ** exponents)).astype(np.float32)
    if not scaling or scaling.get("rope_type", "default") == "default":
        return inv
    if scaling["rope_type"] == "longrope":
        raise ValueError("longrope has two frequency tables: use longrope_tables")
    if scaling["rope_type"] == "yarn":
        return _yarn_frequencies(inv, rotary_dim, theta, scaling)
    if scaling["rope_type"] == "linear":  # positions divided by the factor, i.e. every frequency
        return (inv / np.float32(scaling["factor"])).astype(np.float32)
    if scaling["rope_type"] != "llama3":
        raise ValueError(f"unsupported rope_type {scaling['rope_type']!r}")
    factor = scaling["factor"]
    low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_len = scaling["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv
    scaled = np.where(wavelen > old_len / low, inv / factor, inv)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < old_len / high) & ~(wavelen > old_len / low)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def longrope_tables(theta: float, rotary_dim: int, scaling: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, float]:
    """LongRoPE (Phi-3): (short inverse frequencies, long inverse frequencies, attention factor).

    Each table divides the default frequencies by one factor per frequency, `1 / (factor_i * theta^(2i/d))` in
    float32 as transformers computes it; the attention factor multiplies cos and sin whichever table is in use.
    Which table applies is the lowering's business (targets/lower.py `rope`)."""
    exponents = np.arange(0, rotary_dim, 2, dtype=np.int64).astype(np.float32) / rotary_dim
    base = np.float32(theta) ** exponents

    def table(key: str) -> np.ndarray:
        factors = np.asarray(scaling[key], dtype=np.float32)
        if factors.shape != base.shape:
            raise ValueError(f"longrope {key} has {factors.size} entries, expected rotary_dim / 2 = {base.size}")
        return (np.float32(1.0) / (factors * base)).astype(np.float32)

    return table("short_factor"), table("long_factor"), float(scaling["attention_factor"])


def rope_output_scale(scaling: dict[str, Any] | None) -> float:
    """The factor on cos and sin that a scaling implies (YaRN's attention_factor; 1 for the others but longrope,
    whose lowering applies its own)."""
    return float(scaling["attention_factor"]) if scaling and scaling.get("rope_type") == "yarn" else 1.0


def _yarn_frequencies(extrapolated: np.ndarray, rotary_dim: int, theta: float, scaling: dict[str, Any]) -> np.ndarray:
    """YaRN: each frequency blends its interpolated (divided by `factor`) and original value by a ramp over the
    frequency index, between the dimensions where a wavelength turns beta_fast and beta_slow times within the
    original context (floored / ceiled when `truncate`)."""
    factor, original = float(scaling["factor"]), int(scaling["original_max_position_embeddings"])

    def dim_of(rotations: float) -> float:
        return rotary_dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low, high = dim_of(float(scaling["beta_fast"])), dim_of(float(scaling["beta_slow"]))
    if scaling.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, rotary_dim - 1)
    if low == high:
        high += 0.001
    ramp = np.clip((np.arange(rotary_dim // 2, dtype=np.float32) - np.float32(low)) / np.float32(high - low), 0, 1)
    keep = (1 - ramp).astype(np.float32)  # the share of the original (extrapolated) frequency
    exponents = np.arange(0, rotary_dim, 2, dtype=np.int64).astype(np.float32) / rotary_dim
    interpolated = (np.float32(1.0) / (np.float32(factor) * np.float32(theta) ** exponents)).astype(np.float32)
    return (interpolated * (1 - keep) + extrapolated * keep).astype(np.float32)
