"""The pass manager: an ordered list of IR -> IR passes, verified after each, printable after any.

A pass is any object with a `name` and `__call__(module) -> module`; adding one is a one-file change
(write passes/<name>.py, add it to `default_pipeline` below or build a list yourself).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol

from ..errors import ConfigError
from ..ir.graph import Module
from ..ir.printer import format_module
from ..ir.verifier import verify


class Pass(Protocol):
    name: str

    def __call__(self, module: Module) -> Module: ...


@dataclass
class PassManager:
    passes: list[Pass]
    print_after: set[str] = field(default_factory=set)  # pass names, or "all"
    printer: Callable[[str], None] = print

    def run(self, module: Module) -> Module:
        unknown = self.print_after - {p.name for p in self.passes} - {"all"}
        if unknown:
            raise ConfigError.about(f"{{print_after}}: no pass named {', '.join(sorted(unknown))} "
                             f"(passes: {', '.join(p.name for p in self.passes)})")
        verify(module)
        for p in self.passes:
            module = p(module)
            verify(module)
            if p.name in self.print_after or "all" in self.print_after:
                self.printer(f"// IR after {p.name}\n{format_module(module)}")
        return module

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.passes]


def default_pipeline(quant: str, fuse_rope: bool = True, fuse: bool = True, tensor_parallel: int = 1) -> list[Pass]:
    """The passes `ember compile` runs, in order: clean up, shard (tensor parallelism), fuse (on float weights),
    then quantize."""
    from .dce import DeadCodeElimination
    from .fuse_add_norm import FuseAddRMSNorm
    from .fuse_linears import FuseParallelLinears
    from .fuse_qkv import FuseQKVIntoAttention
    from .fuse_rope import FuseRopeIntoAttention
    from .fuse_swiglu import FuseSwiGLU
    from .quantize import Quantize

    quantize = Quantize(quant)
    passes: list[Pass] = [DeadCodeElimination()]
    if tensor_parallel > 1:  # first: fusion and quantization then see each shard's own slices
        from .shard_tensor_parallel import ShardTensorParallel

        passes.append(ShardTensorParallel(tensor_parallel))
    if fuse_rope:
        passes.append(FuseRopeIntoAttention())
    if fuse:  # before Quantize, so it quantizes the fused weights (siblings fuse only where their schemes agree)
        passes += [FuseParallelLinears(quantize.member_scheme), FuseQKVIntoAttention(), FuseSwiGLU(),
                   FuseAddRMSNorm()]
    passes += [DeadCodeElimination(), quantize]
    return passes
