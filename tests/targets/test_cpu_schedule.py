"""The cpu NT-matmul schedule rule (targets/cpu/matmul_schedule.py): applies where it should, yields parallel +
vectorized loops, and matches numpy for symbolic and static m, ragged K/N, fused epilogues and f16 weights."""
from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm.s_tir import dlight as dl
from tvm.script import tirx as T

from ember.targets.cpu.build import cpu_target, schedule_rules
from ember.targets.cpu.matmul_schedule import Matmul, MatmulConfig

K, N = 100, 37  # K % 8 != 0 (4-lane split), N prime (1-row tiles): the awkward case on purpose
ROWS = (1, 5, 37)


@T.prim_func(s_tir=True)
def nt_add(var_x: T.handle, w: T.Buffer((T.int64(N), T.int64(K)), "float32"), var_r: T.handle, var_o: T.handle):
    T.func_attr({"tirx.noalias": True})
    m = T.int64()
    x = T.match_buffer(var_x, (T.int64(1), m, T.int64(K)))
    r = T.match_buffer(var_r, (T.int64(1), m, T.int64(N)))
    o = T.match_buffer(var_o, (T.int64(1), m, T.int64(N)))
    y = T.sblock_alloc_buffer((T.int64(1), m, T.int64(N)))
    for i0, i1, i2, k in T.grid(T.int64(1), m, T.int64(N), T.int64(K)):
        with T.sblock("NT_matmul"):
            v0, v1, v2, vk = T.axis.remap("SSSR", [i0, i1, i2, k])
            with T.init():
                y[v0, v1, v2] = T.float32(0)
            y[v0, v1, v2] = y[v0, v1, v2] + x[v0, v1, vk] * w[v2, vk]
    for a0, a1, a2 in T.grid(T.int64(1), m, T.int64(N)):
        with T.sblock("T_add"):
            v0, v1, v2 = T.axis.remap("SSS", [a0, a1, a2])
            o[v0, v1, v2] = r[v0, v1, v2] + y[v0, v1, v2]


@T.prim_func(s_tir=True)
def nt_f16_weight(var_x: T.handle, w: T.Buffer((T.int64(64), T.int64(96)), "float16"), var_o: T.handle):
    """f16 weight cast to f32 (a prologue block), 2-D activation, batch-like symbolic rows."""
    T.func_attr({"tirx.noalias": True})
    m = T.int64()
    x = T.match_buffer(var_x, (m, T.int64(96)))
    o = T.match_buffer(var_o, (m, T.int64(64)))
    w32 = T.sblock_alloc_buffer((T.int64(64), T.int64(96)))
    for a0, a1 in T.grid(T.int64(64), T.int64(96)):
        with T.sblock("cast"):
            v0, v1 = T.axis.remap("SS", [a0, a1])
            w32[v0, v1] = T.Cast("float32", w[v0, v1])
    for i0, i1, k in T.grid(m, T.int64(64), T.int64(96)):
        with T.sblock("NT_matmul"):
            v0, v1, vk = T.axis.remap("SSR", [i0, i1, k])
            with T.init():
                o[v0, v1] = T.float32(0)
            o[v0, v1] = o[v0, v1] + x[v0, vk] * w32[v1, vk]


@T.prim_func(s_tir=True)
def nt_static_one(x: T.Buffer((T.int64(1), T.int64(1), T.int64(64)), "float32"),
                  w: T.Buffer((T.int64(48), T.int64(64)), "float32"),
                  o: T.Buffer((T.int64(1), T.int64(1), T.int64(48)), "float32")):
    """decode1-style: static batch 1."""
    T.func_attr({"tirx.noalias": True})
    for i0, i1, i2, k in T.grid(T.int64(1), T.int64(1), T.int64(48), T.int64(64)):
        with T.sblock("NT_matmul"):
            v0, v1, v2, vk = T.axis.remap("SSSR", [i0, i1, i2, k])
            with T.init():
                o[v0, v1, v2] = T.float32(0)
            o[v0, v1, v2] = o[v0, v1, v2] + x[v0, v1, vk] * w[v2, vk]


@T.prim_func(s_tir=True)
def batched_qk(var_q: T.handle, var_k: T.handle, var_o: T.handle):
    """Attention-like batched matmul (both operands carry the head axis): not the rule's business."""
    T.func_attr({"tirx.noalias": True})
    m = T.int64()
    q = T.match_buffer(var_q, (T.int64(4), m, T.int64(16)))
    kk = T.match_buffer(var_k, (T.int64(4), T.int64(8), T.int64(16)))
    o = T.match_buffer(var_o, (T.int64(4), m, T.int64(8)))
    for h, i, j, k in T.grid(T.int64(4), m, T.int64(8), T.int64(16)):
        with T.sblock("bmm"):
            vh, vi, vj, vk = T.axis.remap("SSSR", [h, i, j, k])
            with T.init():
                o[vh, vi, vj] = T.float32(0)
            o[vh, vi, vj] = o[vh, vi, vj] + q[vh, vi, vk] * kk[vh, vj, vk]


@T.prim_func(s_tir=True)
def swiglu(var_x: T.handle, var_o: T.handle):
    T.func_attr({"op_pattern": 2, "tirx.noalias": True})
    m = T.int64()
    x = T.match_buffer(var_x, (T.int64(1), m, T.int64(2 * 44)))
    o = T.match_buffer(var_o, (T.int64(1), m, T.int64(44)))
    for i0, i1, i2 in T.grid(T.int64(1), m, T.int64(44)):
        with T.sblock("swiglu"):
            v0, v1, v2 = T.axis.remap("SSS", [i0, i1, i2])
            o[v0, v1, v2] = x[v0, v1, v2] * T.sigmoid(x[v0, v1, v2]) * x[v0, v1, v2 + T.int64(44)]


def _schedule(func: tvm.tirx.PrimFunc) -> tvm.tirx.PrimFunc:
    """Runs the cpu build's rule list, as the pipeline does."""
    target = cpu_target()
    with target:
        mod = dl.ApplyDefaultSchedule(*schedule_rules())(tvm.IRModule({"main": func}))
    return mod["main"]


def _build(func: tvm.tirx.PrimFunc):
    return tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=cpu_target())


def _run(lib, *arrays: np.ndarray, out_shape, out_dtype="float32") -> np.ndarray:
    dev = tvm.cpu()
    out = tvm.runtime.tensor(np.zeros(out_shape, out_dtype), dev)
    lib["main"](*[tvm.runtime.tensor(a, dev) for a in arrays], out)
    return out.numpy()


def _assert_scheduled(func: tvm.tirx.PrimFunc) -> None:
    text = func.script()
    assert func.attrs.get("tirx.is_scheduled"), "no rule applied"
    assert "T.parallel(" in text and "T.vectorized(" in text, text
    assert "_rf" in text  # the Matmul rule (k split into vector lanes + rfactor), not a fallback rule


def test_symbolic_rows_with_add_epilogue():
    func = _schedule(nt_add)
    _assert_scheduled(func)
    lib = _build(func)
    rng = np.random.default_rng(0)
    w = rng.standard_normal((N, K)).astype("float32")
    for m in ROWS:
        x = rng.standard_normal((1, m, K)).astype("float32")
        r = rng.standard_normal((1, m, N)).astype("float32")
        got = _run(lib, x, w, r, out_shape=(1, m, N))
        np.testing.assert_allclose(got, x @ w.T + r, rtol=1e-4, atol=1e-4)


def test_f16_weight_cast_prologue():
    func = _schedule(nt_f16_weight)
    _assert_scheduled(func)
    assert "w32" not in func.script()  # the cast is inlined into the matmul: no f32 copy of the weight
    lib = _build(func)
    rng = np.random.default_rng(1)
    w = rng.standard_normal((64, 96)).astype("float16")
    for m in ROWS:
        x = rng.standard_normal((m, 96)).astype("float32")
        got = _run(lib, x, w, out_shape=(m, 64))
        np.testing.assert_allclose(got, x @ w.astype("float32").T, rtol=1e-4, atol=1e-4)


def test_static_single_row():
    func = _schedule(nt_static_one)
    _assert_scheduled(func)
    lib = _build(func)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1, 1, 64)).astype("float32")
    w = rng.standard_normal((48, 64)).astype("float32")
    np.testing.assert_allclose(_run(lib, x, w, out_shape=(1, 1, 48)), x @ w.T, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("config", [MatmulConfig(mr=1, nr=1), MatmulConfig(mr=3, nr=4), MatmulConfig(mr=8, nr=2)])
def test_tile_configs(config):
    sch = Matmul(config).apply(nt_add, cpu_target(), False)
    assert sch is not None
    lib = _build(sch.mod["main"])
    rng = np.random.default_rng(3)
    w = rng.standard_normal((N, K)).astype("float32")
    for m in ROWS:
        x = rng.standard_normal((1, m, K)).astype("float32")
        r = rng.standard_normal((1, m, N)).astype("float32")
        np.testing.assert_allclose(_run(lib, x, w, r, out_shape=(1, m, N)), x @ w.T + r, rtol=1e-4, atol=1e-4)


def test_elementwise_kernel():
    func = _schedule(swiglu)
    text = func.script()
    assert func.attrs.get("tirx.is_scheduled") and "T.parallel(" in text and "T.vectorized(" in text, text
    lib = _build(func)
    rng = np.random.default_rng(5)
    for m in ROWS:
        x = rng.standard_normal((1, m, 88)).astype("float32")
        gate, up = x[..., :44], x[..., 44:]
        want = gate / (1 + np.exp(-gate)) * up
        np.testing.assert_allclose(_run(lib, x, out_shape=(1, m, 44)), want, rtol=1e-5, atol=1e-6)


def test_leaves_batched_matmul_alone():
    assert Matmul().apply(batched_qk, cpu_target(), False) is None


def test_cpu_target_uses_wide_vectors_on_x86():
    target = cpu_target()
    if "x86" in str(tvm.target.codegen.llvm_get_system_triple()) and target.attrs.get("mcpu"):
        assert tvm.target.codegen.target_has_features("fma", target)


def test_prefill_attention_matches_tvm_kernel():
    """targets/cpu/attention.py against the KV cache's own serial cpu kernel (which the pass keeps, for rope
    inside attention): ragged batch, GQA, causal or not, query chunks shorter than their keys, D = 64 and 48."""
    from tvm.relax.frontend.nn.llm._prefill_kernels import _attention_prefill_ragged_cpu

    from ember.targets.cpu.attention import INLINE_ROPE, NAME, replace_prefill_attention

    dev, rng = tvm.cpu(), np.random.default_rng(4)
    for h_q, h_kv, d in ((6, 2, 64), (4, 4, 48)):
        mod = replace_prefill_attention(tvm.IRModule({NAME: _attention_prefill_ragged_cpu(h_kv, h_q, d, d, "float32", {})}))
        assert "T.parallel(" in mod[NAME].script() and INLINE_ROPE in [g.name_hint for g in mod.get_global_vars()]
        lib = tvm.compile(mod, target=cpu_target())
        cases = (([5, 40], [5, 40], 1, 0), ([3], [70], 1, 0), ([4, 6], [4, 9], 0, 0), ([1], [1], 1, 0),
                 ([3, 20], [9, 20], 1, 1))  # the last one: rope inside attention, i.e. TVM's kernel again
        for lens_q, lens_kv, causal, rotary in cases:
            q = rng.standard_normal((sum(lens_q), h_q, d)).astype("float32")
            k, v = (rng.standard_normal((sum(lens_kv), h_kv, d)).astype("float32") for _ in range(2))
            q_indptr, kv_indptr = (np.concatenate([[0], np.cumsum(n)]).astype("int32") for n in (lens_q, lens_kv))
            positions = np.concatenate([np.arange(b - a, b) for a, b in zip(lens_q, lens_kv)]).astype("int32")
            results = []
            for name in (INLINE_ROPE, NAME):
                out = tvm.runtime.tensor(np.zeros(q.shape, "float32"), dev)
                lse = tvm.runtime.tensor(np.zeros(q.shape[:2], "float32"), dev)
                args = [tvm.runtime.tensor(a, dev) for a in (q, q_indptr, k, v, kv_indptr, positions,
                                                              np.zeros(len(lens_q), "int32"))]
                lib[name](*args, out, lse, causal, rotary, 1.0, 10000.0, d ** -0.5)
                results.append((out.numpy(), lse.numpy()))
            np.testing.assert_allclose(results[1][0], results[0][0], rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(results[1][1], results[0][1], rtol=1e-4, atol=1e-4)
