"""CUDA target: build toolchain (stub driver, multi-arch nvcc, library checks) and pipeline.

Importing this package stays light: it never imports tvm. Import the submodules you need:
`stub_driver` (before `import tvm`), `nvcc`, `library_check`, `pipeline`.
"""
from __future__ import annotations

from ...errors import EmberError


class CudaToolchainError(EmberError, RuntimeError):
    """The CUDA build toolchain is missing or misused; the message is one line."""


__all__ = ["CudaToolchainError"]
