"""ember's runtime: loads an artifact with the TVM runtime only (never tvm.relax or the compiler side).

Importing this package is cheap (the compiler imports `ember.runtime.artifact`); the engine loads on first use.
"""
from __future__ import annotations

from typing import Any

__all__ = ["Engine", "GenerationResult", "SamplingParams"]


def __getattr__(name: str) -> Any:
    if name == "Engine":
        from .engine import Engine

        return Engine
    if name == "GenerationResult":
        from .generate import GenerationResult

        return GenerationResult
    if name == "SamplingParams":
        from .sampler import SamplingParams

        return SamplingParams
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
