"""`ember bench`'s decode rows count the weight bytes a step reads (runtime/bench.py): every weight of a dense
model, and for a mixture-of-experts model the dense weights plus the experts the batch selects, so the roofline
fraction of a MoE artifact is measured against what its step can at best read."""
from __future__ import annotations

import pytest

from ember.runtime.bench import BenchResult


def _result(weight_bytes: int, expert_bytes: int, experts: tuple[int, int]) -> BenchResult:
    result = BenchResult("m", "cuda", "q4f16", "random", weight_bytes=weight_bytes, expert_bytes=expert_bytes,
                         experts=experts, copy_GBps=1000.0)
    result.decode = {1: 100.0, 16: 800.0}
    return result


def test_a_dense_step_reads_every_weight():
    rows = {r["metric"]: r for r in _result(10**9, 0, (0, 0)).rows()}
    assert rows["decode_b1_tok_s"]["weight_bytes_per_step"] == 10**9
    assert rows["decode_b1_tok_s"]["roofline_fraction"] == pytest.approx(0.1)


def test_a_moe_step_reads_the_selected_experts():
    result = _result(10**9, 128 * 10**7, (128, 8))  # 128 experts of 10 MB, 8 per token
    assert result.step_bytes(1) == 10**9 + 8 * 10**7  # one token: its 8 experts
    # 16 tokens: E (1 - (1 - k/E)^16) experts in expectation (uniform routing), ~82 of 128
    expected = 128 * (1 - (1 - 8 / 128) ** 16)
    assert result.step_bytes(16) == 10**9 + int(expected * 10**7)
    assert 80 < expected < 84
