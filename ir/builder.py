"""The builder: model code written like PyTorch, traced into an ir.Module.

    class MLP(Module):
        def __init__(self, hidden, inter, dtype):
            self.up_proj = Linear(hidden, inter, dtype=dtype)
        def __call__(self, x):
            return F.silu(self.up_proj(x))

    module = trace(model, {"decode": {"ids": TensorType(("batch", 1), "int32")}}, name="llama")

Parameters are shapes without data, so tracing an 8B model needs no weights. Parameter names are the
attribute paths (`model.layers.0.self_attn.q_proj.weight`), i.e. the Hugging Face checkpoint keys.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator

from .graph import INPUT, Function, KVCacheSpec, Module as IRModule, Node, Param, Value
from .ops import ShapeError, infer_types
from .types import Dim, TensorType


class TraceError(ValueError):
    pass


class Parameter:
    """A weight declared by a layer. Its name is assigned when the model is traced."""

    def __init__(self, shape: tuple[int, ...], dtype: str, transform: str | None = None,
                 info: dict[str, Any] | None = None) -> None:
        self.type = TensorType(tuple(shape), dtype)
        self.name: str | None = None
        # a weight transform registered in passes/materialize.py, applied to the checkpoint tensor (e.g. Gemma's
        # norm weights are stored as w and used as 1 + w): recorded as the traced Param's info["transform"]
        self.transform = transform
        # more of the traced Param's info: "keep_float" (never quantized: a MoE router), "stacked_experts" (E: a
        # weight of E experts stacked on axis 0, read from E per-expert checkpoint tensors, see build_module)
        self.info = dict(info or {})

    @property
    def shape(self) -> tuple[Dim, ...]:
        return self.type.shape

    @property
    def dtype(self) -> str:
        return self.type.dtype


class Module:
    """Base class of model components: walks attributes (and lists of modules) for parameters."""

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        for attr, value in vars(self).items():
            path = f"{prefix}{attr}"
            if isinstance(value, Parameter):
                yield path, value
            elif isinstance(value, Module):
                yield from value.named_parameters(path + ".")
            elif isinstance(value, (list, tuple)):
                for i, item in enumerate(value):
                    if isinstance(item, Module):
                        yield from item.named_parameters(f"{path}.{i}.")


class Tensor:
    """A handle on a Value of the function being traced; ops on it record Nodes."""

    def __init__(self, value: Value) -> None:
        self.value = value

    @property
    def shape(self) -> tuple[Dim, ...]:
        return self.value.type.shape

    @property
    def dtype(self) -> str:
        return self.value.type.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __add__(self, other: "Tensor") -> "Tensor":
        return emit("add", [self, other])

    def __mul__(self, other: "Tensor") -> "Tensor":
        return emit("mul", [self, other])

    def reshape(self, *shape: Dim) -> "Tensor":
        return emit("reshape", [self], shape=tuple(shape))

    def transpose(self, *axes: int) -> "Tensor":
        return emit("transpose", [self], axes=tuple(axes))

    def astype(self, dtype: str) -> "Tensor":
        return self if dtype == self.dtype else emit("cast", [self], dtype=dtype)

    def __repr__(self) -> str:
        return f"Tensor({self.value.ref}: {self.value.type})"


class _Tracer:
    def __init__(self, module: IRModule, function: Function) -> None:
        self.module = module
        self.function = function
        self.counter = 0

    def value_of(self, item: "Tensor | Parameter") -> Value:
        if isinstance(item, Tensor):
            return item.value
        if isinstance(item, Parameter):
            if item.name is None or item.name not in self.module.params:
                raise TraceError("a Parameter used in tracing is not an attribute of the traced model")
            return self.module.param_value(item.name)
        raise TraceError(f"expected a Tensor or Parameter, got {type(item).__name__}")

    def fresh(self, hint: str) -> str:
        self.counter += 1
        return f"{self.counter - 1}" if not hint else f"{hint}.{self.counter - 1}"


_CURRENT: list[_Tracer] = []


def _tracer() -> _Tracer:
    if not _CURRENT:
        raise TraceError("ops can only be applied while tracing (inside ember.ir.builder.trace)")
    return _CURRENT[-1]


def emit(op: str, inputs: list["Tensor | Parameter"], name: str = "", **attrs: Any) -> Any:
    """Record one node; returns a Tensor, or a tuple of Tensors for multi-output ops."""
    tracer = _tracer()
    values = [tracer.value_of(x) for x in inputs]
    try:
        out_types = infer_types(op, [v.type for v in values], attrs)
    except ShapeError as err:
        raise TraceError(f"{op}({', '.join(f'{v.ref}: {v.type}' for v in values)}): {err}") from None
    node = Node(op, values, dict(attrs))
    node.outputs = [Value(tracer.fresh(name), t, producer=node) for t in out_types]
    tracer.function.nodes.append(node)
    tensors = tuple(Tensor(v) for v in node.outputs)
    return tensors[0] if len(tensors) == 1 else tensors


@contextmanager
def _tracing(tracer: _Tracer):
    _CURRENT.append(tracer)
    try:
        yield
    finally:
        _CURRENT.pop()


EntrySpec = dict[str, dict[str, TensorType]]


def trace(model: Module, entries: EntrySpec, name: str, kv_cache: KVCacheSpec | None = None,
          attrs: dict[str, Any] | None = None) -> IRModule:
    """Trace `getattr(model, entry)(**inputs)` for every entry point into one ir.Module."""
    module = IRModule(name=name, kv_cache=kv_cache, attrs=dict(attrs or {}))
    for pname, param in model.named_parameters():
        param.name = pname
        info = {"transform": param.transform} if param.transform else {}
        module.params[pname] = Param(pname, param.type, {**info, **param.info})
    for fname, inputs in entries.items():
        function = Function(fname, [Value(arg, ty, INPUT) for arg, ty in inputs.items()])
        method: Callable[..., Any] = getattr(model, fname)
        with _tracing(_Tracer(module, function)):
            result = method(**{v.name: Tensor(v) for v in function.inputs})
        results = result if isinstance(result, tuple) else (result,)
        function.outputs = [r.value for r in results]
        module.functions[fname] = function
    return module
