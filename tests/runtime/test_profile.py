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
    summary, first, second = rows[:3]
    assert summary["launches_per_step"] == 3.0
    assert summary["gpu_busy_ms_per_step"] == round(28 / steps / 1e3, 3)
    assert summary["step_ms"] == 0.04
    assert summary["gpu_idle_fraction"] == round(1 - 0.014 / 0.04, 3)
    assert summary["gpu_span_ms_per_step"] == round(37 / steps / 1e3, 3)
    assert first == {"kernel": "gemv_kernel", "calls_per_step": 1.0, "us_per_step": 11.0, "us_per_call": 11.0,
                     "share": round(22 / 28, 4)}
    assert second["kernel"] == "norm_kernel" and second["us_per_step"] == 2.0
    # idle before: norm 2 + 1, memcpy 1 + 1, gemv 4 (after the first step's copy): per step of 2
    assert rows[3:] == [{"idle_before": "gemv_kernel", "us_per_step": 2.0},
                        {"idle_before": "norm_kernel", "us_per_step": 1.5},
                        {"idle_before": "Memcpy DtoH", "us_per_step": 1.0}]


def test_short_name_drops_signature_and_shortens_templates() -> None:
    assert short_name("void fused_rope_kernel(half*, int)") == "fused_rope_kernel"
    long = "void ember::gemv::run<" + ", ".join(["4096"] * 40) + ">(void const*)"
    assert len(short_name(long)) == 90 and short_name(long).endswith("...")


def test_overlapping_kernels_count_once_in_busy() -> None:
    """With programmatic dependent launch a kernel starts before the previous one ends: busy is the union."""
    from ember.runtime.profile import covered

    assert covered([(0, 10), (8, 12), (20, 25), (21, 22)]) == 17
    assert covered([]) == 0
    events = [_kernel("gemv_kernel", 0, 10), _kernel("norm_kernel", 6, 6), _kernel("gemv_kernel", 14, 4)]
    summary, first, second, gap = summarize(events, steps=1, wall_s=20e-6, batch=1, top=2, model="m", quant="q")
    assert gap == {"idle_before": "gemv_kernel", "us_per_step": 2.0}
    assert summary["gpu_busy_ms_per_step"] == 0.016 and summary["gpu_idle_fraction"] == 0.2
    assert first["share"] == round(14 / 20, 4) and second["share"] == round(6 / 20, 4)  # of recorded durations


def test_a_prefill_summary_is_labelled_as_one():
    events = [_kernel("qgemm_kernel", 0, 30), _kernel("attention_kernel", 35, 10)]
    summary = summarize(events, steps=2, wall_s=100e-6, batch=1, top=2, model="m", quant="q", kind="prefill")[0]
    assert summary["profile"] == "prefill" and summary["step_ms"] == 0.05 and summary["gpu_busy_ms_per_step"] == 0.02
