"""Dead-code elimination: drop nodes whose outputs nobody reads (ops with side effects stay),
then parameters no function reads."""
from __future__ import annotations

from ..ir.graph import Module
from ..ir.ops import OPS


class DeadCodeElimination:
    name = "dce"

    def __call__(self, module: Module) -> Module:
        for function in module.functions.values():
            live = {id(v) for v in function.outputs}
            kept = []
            for node in reversed(function.nodes):
                if OPS[node.op].side_effect or any(id(v) in live for v in node.outputs):
                    kept.append(node)
                    live.update(id(v) for v in node.inputs)
            function.nodes = kept[::-1]
        used = module.used_params()
        module.params = {name: p for name, p in module.params.items() if name in used}
        return module
