"""Ops the Llama family does not use (layer_norm, gelu, softmax, matmul, transpose, split, concat, scale, softcap)
lowered for cpu and run, against torch."""
import numpy as np
import pytest
import torch

from ember.ir import functional as F
from ember.ir.builder import Module, Parameter, trace
from ember.ir.graph import KVCacheSpec
from ember.ir.types import TensorType


class Block(Module):
    def __init__(self):
        self.ln_w = Parameter((12,), "float32")
        self.ln_b = Parameter((12,), "float32")

    def forward(self, x, y):
        h = F.layer_norm(x, self.ln_w, self.ln_b, 1e-5)                  # [1, t, 12]
        a, b = F.split(h, [4, 8], axis=2)                                   # [1, t, 4], [1, t, 8]
        scores = F.softmax(F.matmul(a, y), axis=-1)                         # [1, t, 4] @ [1, 4, 6] -> [1, t, 6]
        g = F.gelu(b, approximate="tanh") + F.gelu(b)                       # [1, t, 8]
        t = g.transpose(0, 2, 1).transpose(0, 2, 1)                         # identity via two transposes
        t = F.softcap(F.scale(t, 3.0), 2.0)                                 # 2 * tanh(3t / 2)
        return F.concat([scores, t], axis=2)                                # [1, t, 14]


@pytest.fixture(scope="module")
def vm_and_params():
    import tvm

    from ember.targets.cpu import CpuTarget
    from ember.targets.cpu.build import build_cpu
    from ember.targets.lower import lower

    module = trace(Block(), {"forward": {"x": TensorType((1, "t", 12), "float32"),
                                         "y": TensorType((1, 4, 6), "float32")}}, name="ops",
                   kv_cache=KVCacheSpec(num_layers=1, num_attention_heads=1, num_kv_heads=1, head_dim=8,
                                        dtype="float32"))
    relax_mod, order = lower(module, CpuTarget.parse("cpu"))
    vm = tvm.runtime.vm.VirtualMachine(build_cpu(relax_mod).load(), tvm.cpu())
    rng = np.random.default_rng(0)
    params = {"ln_w": rng.normal(1, 0.1, 12).astype("float32"), "ln_b": rng.normal(0, 0.1, 12).astype("float32")}
    return tvm, vm, [params[name] for name in order], params


@pytest.mark.parametrize("tokens", [1, 7])
def test_ops_match_torch(vm_and_params, tokens):
    tvm, vm, ordered, params = vm_and_params
    rng = np.random.default_rng(tokens)
    x = rng.normal(size=(1, tokens, 12)).astype("float32")
    y = rng.normal(size=(1, 4, 6)).astype("float32")
    S = lambda n: tvm.runtime.ShapeTuple([n])  # noqa: E731
    kv = vm["create_kv"](S(1), S(64), S(16), S(16), S(0))
    dev = tvm.cpu()
    out = vm["forward"](tvm.runtime.tensor(x, dev), tvm.runtime.tensor(y, dev), kv,
                        [tvm.runtime.tensor(p, dev) for p in ordered])[0].numpy()

    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    h = torch.nn.functional.layer_norm(xt, (12,), torch.from_numpy(params["ln_w"]), torch.from_numpy(params["ln_b"]))
    a, b = h[..., :4], h[..., 4:]
    scores = torch.softmax(a @ yt, dim=-1)
    g = torch.nn.functional.gelu(b, approximate="tanh") + torch.nn.functional.gelu(b)
    ref = torch.cat([scores, 2 * torch.tanh(3 * g / 2)], dim=2).numpy()
    np.testing.assert_allclose(out, ref, atol=2e-5, rtol=1e-5)
