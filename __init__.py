"""ember: an ahead-of-time compiler for large language models on Apache TVM.

`import ember` stays light: it pulls in the runtime only when `ember.load` is called,
and never the compiler side (frontend, passes, targets).
"""
from __future__ import annotations

__version__ = "0.1.0"


def load(path, device: str = "cpu", **kwargs):
    """Load a compiled artifact folder and return an `ember.runtime.Engine`."""
    from .runtime.engine import Engine

    return Engine.load(path, device=device, **kwargs)


def load_async(path, device: str = "cpu", **kwargs):
    """Load a compiled artifact folder to serve many concurrent requests: an `ember.runtime.serving.AsyncEngine`
    (continuous batching in its own thread; `async for out in engine.generate(prompt): ...`)."""
    from .runtime.serving.async_engine import AsyncEngine

    return AsyncEngine.load(path, device=device, **kwargs)


__all__ = ["load", "load_async", "__version__"]
