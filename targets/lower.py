"""Lower an ir.Module to a TVM Relax IRModule (through relax.frontend.nn) with TVM's paged KV cache.

Each IR function becomes a Relax function `f(*inputs, kv, packed_params) -> (outputs..., kv)`; a
`create_kv(...)` function builds the cache. Target-specific scheduling happens later (targets/<kind>).
"""
from __future__ import annotations

import inspect
import json
from collections.abc import Mapping
from typing import Any, Callable

import numpy as np

from ..runtime.tvm_import import import_tvm_with_compiler

tvm = import_tvm_with_compiler()  # the compiler's first tvm import: keeps torch out (tvm_ffi imports it when it can, ~1.5 s)
from tvm import relax, te, tirx  # noqa: E402
from tvm.relax.frontend import nn  # noqa: E402
from tvm.relax.frontend.nn import op  # noqa: E402
from tvm.relax.frontend.nn.llm.kv_cache import PagedKVCache, RopeMode, TIRPagedKVCache  # noqa: E402

from ..ir.graph import PARAM, Function, Module, Node, Value
from .base import Target
from .attention_window import SOFTCAP_ATTR, WINDOW_ATTR, WINDOW_BY_SIGN_ATTR, AttentionPlan, attention_plan
from .gpu_schedule import PREFILL_DIMS_ATTR
from . import random_fill as random_fill_fn
from .rope import inverse_frequencies, longrope_tables, rope_output_scale

ROPE_ATTR = "ember_rope"  # IRModule attribute: JSON of the rope the KV cache applies (theta, scaling, rotary_dim)
CREATE_KV_ARGS = ("max_batch_size", "max_total_seq_len", "prefill_chunk_size", "page_size",
                  "support_sliding_window")


PREFILL_FUNCTION = "prefill"  # the entry point that takes a whole prompt (frontend.models.entry_points)
ATTENTION_OPS = ("paged_attention", "paged_attention_qkv")  # the ops that run attention through the KV cache


class LoweringError(ValueError):
    pass


def _rope_config(module: Module) -> dict[str, Any] | None:
    """The rope the KV cache applies (every attention node must agree), or None if rope stays in the graph."""
    configs = [n.attrs.get("rope") for _, n in module.iter_nodes() if n.op in ATTENTION_OPS]
    if not configs or configs[0] is None:
        if any(c is not None for c in configs):
            raise LoweringError("some paged_attention nodes have fused rope and some do not")
        return None
    if any(c != configs[0] for c in configs):
        raise LoweringError("paged_attention nodes fuse different rope configurations")
    return configs[0]


class _Interpreter:
    """Evaluates one IR function with nn ops while nn traces it into Relax."""

    def __init__(self, module: Module, params: dict[str, nn.Parameter], kv: PagedKVCache,
                 overrides: Mapping[str, "Lowering"] | None = None, dequant_stage: bool = True,
                 signed_windows: bool = False) -> None:
        self.module, self.params, self.kv = module, params, kv
        self.signed_windows = signed_windows  # attention_window.WINDOW_BY_SIGN_ATTR: windowed layers pass -sm_scale
        self.overrides = overrides or {}
        self.dequant_stage = dequant_stage  # Target.dequant_stage: quantized weights dequantize in a block of their own
        self.collectives: Mapping[str, str] = {}  # Target.collectives: the packed functions of the collective ops
        self.env: dict[int, nn.Tensor] = {}
        self.symbols: dict[str, Any] = {}
        self._positions: nn.Tensor | None = None

    def run(self, function: Function, args: list[nn.Tensor]) -> list[nn.Tensor]:
        for value, arg in zip(function.inputs, args):
            self.env[id(value)] = arg
            for dim, expr in zip(value.type.shape, arg.shape):
                if isinstance(dim, str):
                    self.symbols[dim] = expr
        for node in function.nodes:
            args = [self.get(v) for v in node.inputs]
            override = self.overrides.get(node.op)
            results = override(self, node, args) if override is not None else None
            if results is None:  # no target-specific kernel for this node: the generic lowering
                results = LOWERINGS[node.op](self, node, args)
            results = results if isinstance(results, (list, tuple)) else [results]
            for value, result in zip(node.outputs, results):
                self.env[id(value)] = result
        return [self.get(v) for v in function.outputs]

    def get(self, value: Value) -> nn.Tensor:
        if value.kind == PARAM:
            return self.params[value.name]
        return self.env[id(value)]

    def shape(self, dims) -> list[Any]:
        return [self.symbols[d] if isinstance(d, str) else d for d in dims]

    def attention_scale(self, node: Node) -> float:
        """The sm_scale an attention node passes the KV cache: negated on a windowed layer when only some layers
        have the window (attention_window.WINDOW_BY_SIGN_ATTR)."""
        scale = float(node.attrs["sm_scale"])
        return -scale if self.signed_windows and node.attrs.get("sliding_window") is not None else scale

    def positions(self, total: Any) -> nn.Tensor:
        if self._positions is None:
            self._positions = self.kv.get_query_positions(total)
        return self._positions


Lowering = Callable[[_Interpreter, Node, list[nn.Tensor]], Any]
LOWERINGS: dict[str, Lowering] = {}


def lowers(name: str):
    def wrap(fn: Lowering) -> Lowering:
        LOWERINGS[name] = fn
        return fn

    return wrap


def _take(x: nn.Tensor, indices: nn.Tensor, axis: int, name: str) -> nn.Tensor:
    # "clip" instead of nn's "fast" mode: an out-of-range index must never become a wild read.
    return op.wrap_nested(relax.op.take(x._expr, indices._expr, axis=axis, mode="clip"), name=name)


def _as(x: nn.Tensor, dtype: str) -> nn.Tensor:
    return x if x.dtype == dtype else x.astype(dtype)


@lowers("embedding")
def _embedding(it, node, args):
    ids, weight = args
    flat = op.reshape(ids, [-1]) if len(ids.shape) != 1 else ids
    rows = _as(_take(weight, flat, 0, "embedding"), node.attrs.get("dtype", weight.dtype))
    return op.reshape(rows, list(ids.shape) + [weight.shape[1]])


@lowers("linear")
def _linear(it, node, args):
    x, weight = args[0], _as(args[1], args[0].dtype)
    # fp32 accumulation: TVM's matmul accumulates in its output dtype.
    y = _as(op.matmul(x, op.permute_dims(weight), out_dtype="float32"), x.dtype)
    return y + _as(args[2], x.dtype) if len(args) == 3 else y


@lowers("matmul")
def _matmul(it, node, args):
    a, b = args
    return _as(op.matmul(a, b, out_dtype="float32"), a.dtype)


@lowers("rms_norm")
def _rms_norm(it, node, args):
    from .lower_fused import rms_norm_kernel  # one kernel with fp32 math (TVM's op adds cast kernels in fp16)

    x, weight = args
    return rms_norm_kernel(x, weight, node.attrs["eps"])


@lowers("layer_norm")
def _layer_norm(it, node, args):
    x, weight, bias = args
    y = op.layer_norm(_as(x, "float32"), [x.shape[-1]], _as(weight, "float32"), _as(bias, "float32"),
                      eps=node.attrs["eps"])
    return _as(y, x.dtype)


@lowers("rope")
def _rope(it, node, args):
    (x,) = args
    b, s, heads, dim = x.shape
    rotary = node.attrs.get("rotary_dim") or dim
    if (node.attrs.get("scaling") or {}).get("rope_type") == "longrope":
        return _longrope(it, node, x, rotary)
    inv = nn.Tensor.from_const(inverse_frequencies(node.attrs["theta"], rotary, node.attrs.get("scaling")))
    scale = rope_output_scale(node.attrs.get("scaling"))  # YaRN scales cos and sin
    positions = it.positions(b * s)
    half = rotary // 2

    def compute(xt: te.Tensor, pos: te.Tensor, inv_freq: te.Tensor) -> te.Tensor:
        seq = xt.shape[1]  # the kernel's own dim (x.shape's var is the Relax function's, undefined in the PrimFunc)

        def element(i, j, h, d):
            in_rot = d < rotary
            k = tirx.if_then_else(d < half, d, d - half)
            angle = pos[i * seq + j].astype("float32") * inv_freq[tirx.min(k, half - 1)]
            partner = tirx.if_then_else(d < half, -xt[i, j, h, tirx.min(d + half, dim - 1)],
                                        xt[i, j, h, tirx.max(d - half, 0)]).astype("float32")
            cos, sin = tirx.cos(angle), tirx.sin(angle)
            if scale != 1.0:
                cos, sin = cos * tirx.const(scale, "float32"), sin * tirx.const(scale, "float32")
            rotated = xt[i, j, h, d].astype("float32") * cos + partner * sin
            return tirx.if_then_else(in_rot, rotated.astype(xt.dtype), xt[i, j, h, d])

        return te.compute(xt.shape, element, name="rope")

    return op.tensor_expr_op(compute, "rope", [x, positions, inv])


def _longrope(it, node, x, rotary: int):
    """LongRoPE: the short or the long frequency table, cos and sin times the attention factor.

    transformers picks the table once per forward call: long when the call's largest position + 1 exceeds
    original_max_position_embeddings. A prefill call here is one ragged batch of prompt chunks, so it does the same
    with the largest position among the call's tokens (exactly transformers' rule when the call holds one
    sequence, as in `generate` and `score`). A decode call holds one token per sequence, so each token takes the
    table its own position calls for: transformers' rule applied to each sequence, and no sequence's rope depends
    on what else is in the batch. Keys already in the cache keep the rotation they were appended with, as in
    transformers' forward; its Phi-3 `generate` additionally recomputes the whole cache once, when a sequence
    grows past original_max_position_embeddings, which ember does not (the README says so)."""
    scaling = node.attrs["scaling"]
    short, long_, factor = longrope_tables(node.attrs["theta"], rotary, scaling)
    original = int(scaling["original_max_position_embeddings"])
    b, s, heads, dim = x.shape
    positions = it.positions(b * s)
    per_token = isinstance(s, int) and s == 1  # decode: one token per sequence
    limit = positions if per_token else op.max(positions, axis=0, keepdims=True)
    tables = nn.Tensor.from_const(np.stack([short, long_]))
    half = rotary // 2

    def compute(xt: te.Tensor, pos: te.Tensor, top: te.Tensor, inv_freq: te.Tensor) -> te.Tensor:
        seq = xt.shape[1]

        def element(i, j, h, d):
            t = i * seq + j
            use_long = (top[t] if per_token else top[0]) + 1 > original
            k = tirx.min(tirx.if_then_else(d < half, d, d - half), half - 1)
            angle = pos[t].astype("float32") * inv_freq[tirx.if_then_else(use_long, 1, 0), k]
            partner = tirx.if_then_else(d < half, -xt[i, j, h, tirx.min(d + half, dim - 1)],
                                        xt[i, j, h, tirx.max(d - half, 0)]).astype("float32")
            scale = tirx.const(factor, "float32")
            rotated = (xt[i, j, h, d].astype("float32") * (tirx.cos(angle) * scale)
                       + partner * (tirx.sin(angle) * scale))
            return tirx.if_then_else(d < rotary, rotated.astype(xt.dtype), xt[i, j, h, d])

        return te.compute(xt.shape, element, name="longrope")

    return op.tensor_expr_op(compute, "longrope", [x, positions, limit, tables])


@lowers("paged_attention")
def _paged_attention(it, node, args):
    q, k, v = args
    b, s, heads, dim = q.shape
    qkv = op.concat([q, k, v], dim=2)
    return it.kv.attention_with_fused_qkv(node.attrs["layer"], qkv, heads, sm_scale=it.attention_scale(node))


@lowers("silu")
def _silu(it, node, args):
    return op.silu(args[0])


@lowers("gelu")
def _gelu(it, node, args):
    return op.gelu(args[0], approximate=None if node.attrs.get("approximate", "none") == "none" else "tanh")


@lowers("scale")
def _scale(it, node, args):
    (x,) = args
    return x * nn.Tensor.from_scalar(node.attrs["factor"], x.dtype)


@lowers("softcap")
def _softcap(it, node, args):
    (x,) = args
    cap = node.attrs["cap"]
    y = op.tanh(_as(x, "float32") * nn.Tensor.from_scalar(1.0 / cap, "float32")) * nn.Tensor.from_scalar(cap, "float32")
    return _as(y, x.dtype)


@lowers("add")
def _add(it, node, args):
    return args[0] + args[1]


@lowers("mul")
def _mul(it, node, args):
    return args[0] * args[1]


@lowers("cast")
def _cast(it, node, args):
    return _as(args[0], node.attrs["dtype"])


@lowers("softmax")
def _softmax(it, node, args):
    (x,) = args
    return _as(op.softmax(_as(x, "float32"), axis=node.attrs.get("axis", -1)), x.dtype)


@lowers("reshape")
def _reshape(it, node, args):
    return op.reshape(args[0], it.shape(node.attrs["shape"]))


@lowers("transpose")
def _transpose(it, node, args):
    return op.permute_dims(args[0], list(node.attrs["axes"]))


@lowers("split")
def _split(it, node, args):
    bounds = list(np.cumsum(node.attrs["sizes"])[:-1])
    return list(op.split(args[0], [int(b) for b in bounds], axis=node.attrs["axis"]))


@lowers("concat")
def _concat(it, node, args):
    return op.concat(list(args), dim=node.attrs["axis"])


@lowers("gather_tokens")
def _gather_tokens(it, node, args):
    return _take(args[0], args[1], 1, "gather_tokens")


def _prefill_dims(module: Module) -> list[str]:
    """The symbolic dims of the prefill entry point's token ids (the number of prompt tokens per call)."""
    prefill = module.functions.get(PREFILL_FUNCTION)
    if prefill is None:
        return []
    ids = next((v for v in prefill.inputs if v.name == "ids"), None)
    return [d for d in ids.type.shape if isinstance(d, str)] if ids is not None else []


def _nn_spec(value: Value) -> nn.spec.Tensor:
    return nn.spec.Tensor(list(value.type.shape), value.type.dtype)


class _LoweredModel(nn.Module):
    def __init__(self, module: Module, target: Target) -> None:
        self._ir = module
        self._target = target.tvm_target()
        self._overrides = target.lowerings()
        self._dequant_stage = target.dequant_stage
        self._collectives = target.collective_functions()
        self._rope = _rope_config(module)
        self._plan: AttentionPlan = attention_plan(module, ATTENTION_OPS)
        self._param_map: dict[str, nn.Parameter] = {}
        for i, (name, param) in enumerate(module.params.items()):
            tensor = nn.Parameter(list(param.type.shape), param.type.dtype)
            setattr(self, f"p{i:04d}", tensor)
            self._param_map[name] = tensor

    def method(self, function: Function) -> Callable[..., Any]:
        def run(*args):
            *inputs, kv = args
            interpreter = _Interpreter(self._ir, self._param_map, kv, self._overrides, self._dequant_stage,
                                       signed_windows=self._plan.window_layers is not None)
            interpreter.collectives = self._collectives
            outputs = interpreter.run(function, list(inputs))
            return (*outputs, kv)

        # nn's exporter binds spec arguments by the method's signature.
        names = [v.name for v in function.inputs] + ["kv"]
        run.__signature__ = inspect.Signature(
            [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in names])
        return run

    def create_kv(self, max_batch_size, max_total_seq_len, prefill_chunk_size, page_size, support_sliding_window):
        spec = self._ir.kv_cache
        rope = self._rope or {}
        scaling = {k: v for k, v in (rope.get("scaling") or {}).items()}
        cache = TIRPagedKVCache(
            attn_kind="mha",
            max_batch_size=max_batch_size,
            max_total_seq_len=max_total_seq_len,
            prefill_chunk_size=prefill_chunk_size,
            page_size=page_size,
            support_sliding_window=support_sliding_window,
            layer_partition=relax.ShapeExpr([0, spec.num_layers]),
            num_hidden_layers=spec.num_layers,
            num_attention_heads=spec.num_attention_heads,
            num_key_value_heads=spec.num_kv_heads,
            qk_head_dim=spec.head_dim,
            v_head_dim=spec.head_dim,
            mla_original_qk_head_dim=0,
            mla_original_v_head_dim=0,
            rope_mode=RopeMode.NORMAL if self._rope else RopeMode.NONE,
            rope_scale=1,
            rope_theta=rope.get("theta", 10000.0),
            rope_scaling=scaling,
            rope_ext_factors=relax.prim_value(0),
            rotary_dim=rope.get("rotary_dim", spec.head_dim),
            enable_disaggregation=False,
            dtype=spec.dtype,
            target=self._target,
        )
        _tag_rope(rope.get("theta", 10000.0), rope.get("rotary_dim", spec.head_dim), scaling)
        return cache


ROPE_ATTR = "ember.rope"  # on the cache's rope PrimFunc: what targets/cuda/kv_append.py needs to replace it


def _tag_rope(theta: float, rotary_dim: int, scaling: dict[str, Any]) -> None:
    """The cache's rope PrimFunc (`tir_split_rotary`, later `fused_rope`) bakes theta and the scaling into its
    body; a copy of them as a JSON attribute lets a target swap the kernel without parsing TIR."""
    bb = relax.BlockBuilder.current()
    for gv, func in bb.get().functions_items():
        if gv.name_hint == "tir_split_rotary" and isinstance(func, tirx.PrimFunc):
            info = {"theta": float(theta), "scale": 1.0, "rotary_dim": int(rotary_dim), "scaling": scaling}
            bb.update_func(gv, func.with_attr(ROPE_ATTR, json.dumps(info, sort_keys=True)))


def _check_attention_features(plan: AttentionPlan, module: Module, target: Target) -> None:
    """Refuse, in one line, what the target's attention kernels cannot apply: a window on some layers only, and
    soft-capping of the scores (`Target.attention_features`, on top of `window_in_kernels`)."""
    from ..errors import ConfigError

    kv = module.kv_cache
    if plan.window_layers is not None and plan.window != kv.sliding_window:
        raise LoweringError(f"the KV cache spec's window {kv.sliding_window} is not the layers' {plan.window}")
    covered = target.window_in_kernels(kv)
    cache = f"{kv.dtype} cache, head_dim {kv.head_dim}"
    if plan.window_layers is not None and not (covered and "window_layers" in target.attention_features):
        raise ConfigError(f"--target {target.spec}: a sliding window on {len(plan.window_layers)} of "
                          f"{kv.num_layers} layers (the others global) needs ember's own attention kernels to take "
                          f"a window per layer, which this target does not have for a {cache}")
    if plan.softcap and not (covered and "softcap" in target.attention_features):
        raise ConfigError(f"--target {target.spec}: config field 'attn_logit_softcapping' ({plan.softcap:g}) needs "
                          f"soft-capping inside ember's attention kernels, which this target does not have for a "
                          f"{cache}")


def lower(module: Module, target: Target, random_fill: bool = False) -> tuple[tvm.IRModule, list[str]]:
    """Returns the Relax module and the parameter names in argument order. With `random_fill`, the module
    also exports `fill_random_<dtype>` for every parameter dtype (benchmark builds). The target's own lowerings
    (`Target.lowerings()`, op -> lowering) are tried first, and a None result falls back to the generic one.
    The module records the prefill entry point's token-count dims (gpu_schedule.PREFILL_DIMS_ATTR) and the rope
    the KV cache applies (ROPE_ATTR), for targets' schedules and kernel replacements."""
    if module.kv_cache is None:
        raise LoweringError(f"module {module.name} has no KV cache spec")
    model = _LoweredModel(module, target)
    _check_attention_features(model._plan, module, target)
    spec: dict[str, Any] = {}
    for name, function in module.functions.items():
        setattr(model, name, model.method(function))
        spec[name] = {v.name: _nn_spec(v) for v in function.inputs}
        spec[name]["kv"] = nn.spec.Object(object_type=PagedKVCache)
        spec[name]["$"] = {"param_mode": "packed", "effect_mode": "none"}
    spec["create_kv"] = {arg: int for arg in CREATE_KV_ARGS}
    spec["create_kv"]["$"] = {"param_mode": "none", "effect_mode": "none"}
    if random_fill:
        for dtype in sorted({p.type.dtype for p in module.params.values()}):
            setattr(model, random_fill_fn.function_name(dtype), random_fill_fn.fill_method(dtype))
            spec[random_fill_fn.function_name(dtype)] = random_fill_fn.fill_spec()
    mod, named = model.export_tvm(spec=spec)
    extend = getattr(target, "extend_module", None)  # a target's own entry points (cuda: the device sampler)
    if extend is not None:
        mod = extend(mod)
    rope = model._rope  # what the KV cache's rope kernel computes, for targets that replace that kernel
    if rope is not None:
        mod = mod.with_attr(ROPE_ATTR, json.dumps({"rotary_dim": module.kv_cache.head_dim, **rope}))
    mod = mod.with_attr(PREFILL_DIMS_ATTR, _prefill_dims(module))
    if module.kv_cache.sliding_window is not None and target.window_in_kernels(module.kv_cache):
        mod = mod.with_attr(WINDOW_ATTR, int(module.kv_cache.sliding_window))
    if model._plan.window_layers is not None:
        mod = mod.with_attr(WINDOW_BY_SIGN_ATTR, 1)
    if model._plan.softcap:
        mod = mod.with_attr(SOFTCAP_ATTR, float(model._plan.softcap))
    by_attr = {f"p{i:04d}": name for i, name in enumerate(module.params)}
    order = [by_attr[attr] for attr, _ in named]
    return mod, order


from . import lower_fused  # noqa: E402,F401  (registers the lowerings of ir/ops_fused.py)
from . import lower_quant  # noqa: E402,F401  (registers the lowerings of ir/ops_quant.py)
from . import lower_moe  # noqa: E402,F401  (the generic refusal of ir/ops_moe.py's ops)
from . import lower_collective  # noqa: E402,F401  (ir/ops_collective.py: tensor parallelism)
