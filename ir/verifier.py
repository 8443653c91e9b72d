"""Structural and type checks of an ir.Module; errors name the function, node and shapes."""
from __future__ import annotations

from .graph import INPUT, NODE, PARAM, Module
from .ops import OPS, ShapeError, infer_types


class VerifyError(ValueError):
    pass


def verify(module: Module) -> None:
    names_seen: set[str] = set()
    for function in module.functions.values():
        defined = {id(v) for v in function.inputs}
        names = {v.name for v in function.inputs}
        for v in function.inputs:
            if v.kind != INPUT:
                raise VerifyError(f"{function.name}: input {v.ref} has kind {v.kind}")
        for index, node in enumerate(function.nodes):
            where = f"{function.name}: node {index} ({node.op} -> {', '.join(v.ref for v in node.outputs)})"
            if node.op not in OPS:
                raise VerifyError(f"{where}: unknown op")
            for value in node.inputs:
                if value.kind == PARAM:
                    param = module.params.get(value.name)
                    if param is None:
                        raise VerifyError(f"{where}: reads unknown parameter {value.ref}")
                    if param.type != value.type:
                        raise VerifyError(f"{where}: {value.ref} is typed {value.type} but the parameter is {param.type}")
                elif id(value) not in defined:
                    raise VerifyError(f"{where}: reads {value.ref} before it is defined")
            try:
                expected = infer_types(node.op, [v.type for v in node.inputs], node.attrs)
            except ShapeError as err:
                shapes = ", ".join(f"{v.ref}: {v.type}" for v in node.inputs)
                raise VerifyError(f"{where}: {err} (inputs {shapes})") from None
            if [v.type for v in node.outputs] != expected:
                got = ", ".join(str(v.type) for v in node.outputs)
                raise VerifyError(f"{where}: outputs typed {got} but {node.op} gives {', '.join(map(str, expected))}")
            for value in node.outputs:
                if value.kind != NODE or value.producer is not node:
                    raise VerifyError(f"{where}: output {value.ref} is not owned by this node")
                if value.name in names:
                    raise VerifyError(f"{where}: {value.ref} is defined twice")
                names.add(value.name)
                defined.add(id(value))
        for value in function.outputs:
            if id(value) not in defined:
                raise VerifyError(f"{function.name}: returns undefined {value.ref}")
        names_seen.update(names)
