"""`ember bench --profile`: the kernel table built from a CUPTI trace (synthetic events here; the GPU run is in
docs/measurements/2026-12-02-h200-profile-*.jsonl)."""
from __future__ import annotations

from ember.runtime.profile import short_name, summarize


def _kernel(name: str, ts: float, dur: float, cat: str = "kernel") -> dict:
    return {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur}


def test_summarize_groups_kernels_and_splits_busy_from_idle() -> None:
    steps = 2
    events = [
        _kernel("gemv_kernel", 0, 10), _kernel("norm_kernel", 12, 2), _kernel("Memcpy DtoH", 15, 1, "gpu_memcpy"),
        _kernel("gemv_kernel", 20, 12), _kernel("norm_kernel", 33, 2), _kernel("Memcpy DtoH", 36, 1, "gpu_memcpy"),
        {"ph": "X", "cat": "cpu_op", "name": "ignored", "ts": 0, "dur": 1000},  # host events are not GPU time
    ]
    rows = summarize(events, steps=steps, wall_s=80e-6, batch=1, top=2, model="m", quant="q")
    summary, first, second = rows
    assert summary["launches_per_step"] == 3.0
    assert summary["gpu_busy_ms_per_step"] == round(28 / steps / 1e3, 3)
    assert summary["step_ms"] == 0.04
    assert summary["gpu_idle_fraction"] == round(1 - 0.014 / 0.04, 3)
    assert summary["gpu_span_ms_per_step"] == round(37 / steps / 1e3, 3)
    assert first == {"kernel": "gemv_kernel", "calls_per_step": 1.0, "us_per_step": 11.0, "us_per_call": 11.0,
                     "share": round(22 / 28, 4)}
    assert second["kernel"] == "norm_kernel" and second["us_per_step"] == 2.0
    assert len(rows) == 3  # top=2


def test_short_name_drops_signature_and_shortens_templates() -> None:
    assert short_name("void fused_rope_kernel(half*, int)") == "fused_rope_kernel"
    long = "void ember::gemv::run<" + ", ".join(["4096"] * 40) + ">(void const*)"
    assert len(short_name(long)) == 90 and short_name(long).endswith("...")
