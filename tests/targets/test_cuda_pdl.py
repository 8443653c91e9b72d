"""Programmatic dependent launch of ember's cuda kernels (targets/cuda/pdl.py, kernels/pdl.cuh), no GPU needed:
which kernels get the launch tag, that every tagged kernel's source waits, and the include inlining that brings
pdl.cuh into TVM's generated source. Its timing and numerics on the H200 are in docs/measurements."""
from __future__ import annotations

import re

import pytest

from ember.targets.cuda import pdl
from ember.targets.cuda.device_code import KERNEL_DIR, SOURCES, with_device_sources


def test_tag_goes_before_dynamic_shared_memory():
    assert pdl.with_pdl_tag(["blockIdx.x", "threadIdx.x"]) == ["blockIdx.x", "threadIdx.x", pdl.TAG]
    assert pdl.with_pdl_tag(["blockIdx.x", pdl.DYN_SHARED]) == ["blockIdx.x", pdl.TAG, pdl.DYN_SHARED]
    assert pdl.with_pdl_tag(["blockIdx.x", pdl.TAG]) == ["blockIdx.x", pdl.TAG]


def test_only_hopper_and_later_builds_and_switch(monkeypatch):
    assert pdl.enabled(["sm_90"]) and pdl.enabled(["sm_90a", "sm_100"])
    assert not pdl.enabled(["sm_80", "sm_90"]) and not pdl.enabled([])
    monkeypatch.setenv(pdl.ENV, "0")
    assert not pdl.enabled(["sm_90"])


# the device templates the lowerings call, per namespace (native_gemv.py, native_lowbatch.py, native_norm.py,
# attention.py, native_linear.py); prefill_attention.py's ragged and paged entries both run attend()
# (gemv's run() is run_block(blockIdx.x, ...), kgemv's run() is run_rows(blockIdx.x, 0, ...))
ENTRIES = {"ember::gemv::": ["run_block"], "ember::lowbatch::": ["run"], "ember::norm::": ["add_rms_norm"],
           "ember::attn::": ["split", "merge"], "ember::linear::": ["gemv", "mma"], "ember::kv::": ["rotary", "append"],
           "ember::prefill::": ["attend"],
           "ember::qgemm::": ["run"], "ember::kgemv::": ["run_rows"],
           "ember::klowbatch::": ["run"]}


def _body(text: str, name: str) -> str:
    """A function's text from its signature to its closing brace (the first `}` at column 0 after it)."""
    m = re.search(rf"__device__ __forceinline__ void {name}\(", text)
    assert m, name
    return text[m.start():text.index("\n}", m.start())]


def test_entries_cover_the_tagged_namespaces():
    assert sorted(ENTRIES) == sorted(pdl.AWARE)


@pytest.mark.parametrize("namespace", sorted(ENTRIES))
def test_every_tagged_kernel_waits_before_reading(namespace):
    """A tagged kernel may start before its predecessor ends: each entry must wait() before reading activations
    (checked here as: it calls wait(), after launch_dependents(), before its first __syncthreads or store)."""
    text = (KERNEL_DIR / dict(SOURCES)[namespace]).read_text()
    assert '#include "pdl.cuh"' in text
    for name in ENTRIES[namespace]:
        body = _body(text, name)
        assert body.count("pdl::wait();") == 1 and body.count("pdl::launch_dependents();") == 1, name
        wait = body.index("pdl::wait();")
        assert body.index("pdl::launch_dependents();") < wait, name
        assert "__syncthreads" not in body[:wait] and "__ldg(" not in body[:wait], name


def test_prefill_entries_go_through_the_waiting_body():
    text = (KERNEL_DIR / dict(SOURCES)["ember::prefill::"]).read_text()
    for name in ("ragged", "paged"):
        body = _body(text, name)
        assert body.count("attend<") == 1 and "pdl::" not in body, name


def test_local_includes_are_inlined_once():
    code = 'extern "C" __global__ void k() { ember::gemv::run<0>(); ember::norm::add_rms_norm<8>(); }'
    out = with_device_sources(code)
    assert out.count("#define EMBER_PDL_CUH") == 1
    assert '#include "' not in out  # nvcc gets no include path for kernels/
    assert out.index("#define EMBER_PDL_CUH") < out.index("namespace gemv")
    assert out.endswith(code)
    assert with_device_sources("no ember code") == "no ember code"
