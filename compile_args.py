"""The checks of `ember compile`'s arguments that need no model file: run first, so a typo fails in well under a
second instead of after the model is read or the kernels are built. Errors name `--quant` on the command line and
`quant` from Python (errors.EmberError.about)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import ConfigError
from .passes.quant_recipes import RECIPES
from .passes.quant_schemes import SCHEMES
from .runtime.output_rules import check_destination
from .targets.base import TARGETS, Target, parse_target, target_forms

if TYPE_CHECKING:
    from .compiler import CompileRequest

DTYPES = ("float32", "float16", "bfloat16")
MAX_SHARDS = 64


def parse_target_arg(target: object) -> Target:
    """The Target for a valid --target (no tvm import); a one-line error naming the argument otherwise."""
    name = target.strip().partition(":")[0] if isinstance(target, str) else None
    if name not in TARGETS:
        raise ConfigError.about(f"{{target}} {target!r}: unknown target (known: {target_forms()})")
    try:
        return parse_target(target)
    except ValueError as err:
        raise ConfigError.about(f"{{target}}: {err}") from None


def check_request(request: CompileRequest) -> Target:
    """Check what the arguments alone decide; returns the target."""
    target = parse_target_arg(request.target)
    if request.quant is not None and request.quant not in SCHEMES and request.quant not in RECIPES:
        raise ConfigError.about(f"{{quant}} {request.quant!r}: unknown scheme (known: "
                                f"{', '.join([*SCHEMES, *RECIPES])})")
    if request.dtype is not None and request.dtype not in DTYPES:
        raise ConfigError.about(f"{{dtype}} {request.dtype!r}: unknown compute dtype (known: {', '.join(DTYPES)})")
    if request.random_weights and request.weights:
        raise ConfigError.about("{random_weights} and {weights} exclude each other")
    tp = request.tensor_parallel
    if isinstance(tp, bool) or not isinstance(tp, int) or not 1 <= tp <= MAX_SHARDS:
        raise ConfigError.about(f"{{tensor_parallel}} {tp!r}: must be an integer from 1 to {MAX_SHARDS}")
    if tp > 1 and target.name == "metal":
        raise ConfigError.about(f"{{tensor_parallel}} {tp}: --target metal runs on one GPU")
    _check_print_after(request)
    if request.output:  # the default path depends on the model's name and quant: checked once they are known
        check_destination(request.output, replace=request.force)
    return target


def _check_print_after(request: CompileRequest) -> None:
    from .passes.manager import default_pipeline

    names = [p.name for p in default_pipeline(request.quant or "q0f32", request.fuse_rope, request.fuse,
                                              tensor_parallel=request.tensor_parallel)]
    unknown = sorted(set(request.print_after) - set(names) - {"all"})
    if unknown:
        raise ConfigError.about(f"{{print_after}}: no pass named {', '.join(unknown)} (passes: {', '.join(names)})")
