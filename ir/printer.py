"""Stable text form of an ir.Module (what `ember inspect --ir` and `--print-after` show)."""
from __future__ import annotations

from typing import Any

from .graph import Function, Module


def _attr(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_attr(v)}" for k, v in value.items() if v is not None) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_attr(v) for v in value) + "]"
    return str(value)


def format_function(function: Function) -> str:
    args = ", ".join(f"{v.ref}: {v.type}" for v in function.inputs)
    lines = [f"func {function.name}({args}) {{"]
    for node in function.nodes:
        outs = ", ".join(f"{v.ref}: {v.type}" for v in node.outputs)
        ins = ", ".join(v.ref for v in node.inputs)
        attrs = ", ".join(f"{k}={_attr(v)}" for k, v in node.attrs.items() if v is not None)
        lines.append(f"  {outs} = {node.op}({ins}{', ' + attrs if attrs else ''})")
    lines.append(f"  return {', '.join(v.ref for v in function.outputs)}")
    lines.append("}")
    return "\n".join(lines)


def format_module(module: Module) -> str:
    lines = [f"module {module.name}"]
    if module.attrs:
        lines.append("attrs " + _attr(module.attrs))
    if module.kv_cache is not None:
        lines.append("kv_cache " + _attr(vars(module.kv_cache)))
    for param in module.params.values():
        info = f"  {_attr(param.info)}" if param.info else ""
        lines.append(f"param @{param.name}: {param.type}{info}")
    for function in module.functions.values():
        lines.append("")
        lines.append(format_function(function))
    return "\n".join(lines) + "\n"
