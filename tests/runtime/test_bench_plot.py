"""`ember bench --plot`: rows -> plotted series (exactly), and a PNG from rows recorded on the H200 (run 1 of
benchmarks/RESULTS.md: ember's rows, llama-bench's and llama-batched-bench's own lines, as gpu.sh writes them)."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from ember.errors import InputError
from ember.runtime.bench_plot import plot_rows, read_rows, series_of
from ember.runtime.peer_llamacpp import parse_batched_bench, parse_llama_bench_models

RECORDED = Path(__file__).parents[1] / "data" / "bench-h200"


def test_recorded_rows_to_series():
    series = {s.label: s for s in series_of(read_rows([RECORDED]))}
    assert list(series) == ["ember q4f16", "llama.cpp Q4_0 (batched-bench)", "llama.cpp F16 (batched-bench)",
                            "llama.cpp llama 8B Q4_0 (llama-bench)", "llama.cpp llama 8B F16 (llama-bench)"]
    assert series["ember q4f16"].points == [(1, 406.2), (2, 493.7), (4, 969.3), (8, 1870.2), (16, 3272.8),
                                            (32, 3875.2), (64, 4130.8)]
    # the roofline: copy bandwidth / weight bytes per step (4206.2 GB/s, 5042741248 bytes in every decode row)
    assert series["ember q4f16"].roofline_steps_per_s == pytest.approx(4206.2e9 / 5042741248)
    assert series["llama.cpp Q4_0 (batched-bench)"].points == [(1, 326.6), (4, 930.5), (16, 2199.8), (64, 4923.9)]
    assert series["llama.cpp F16 (batched-bench)"].points == [(1, 205.8), (4, 566.0), (16, 1895.9), (64, 6092.1)]
    # llama-bench -n 128: 128 tokens from an empty context, one point each (the figures of RESULTS.md's run 1)
    assert series["llama.cpp llama 8B Q4_0 (llama-bench)"].points == [(1, 337.3)]
    assert series["llama.cpp llama 8B F16 (llama-bench)"].points == [(1, 209.4)]
    assert all(s.roofline_steps_per_s is None for label, s in series.items() if label.startswith("llama.cpp"))


def test_series_keep_the_best_of_a_batch_and_skip_other_rows():
    base = {"engine": "ember", "quant": "q4f16", "model": "m"}
    rows = [{**base, "metric": "decode_b4_tok_s", "value": 10.0}, {**base, "metric": "decode_b1_tok_s", "value": 3.0},
            {**base, "metric": "decode_b4_tok_s", "value": 12.5}, {**base, "metric": "prefill_pp128_tok_s", "value": 9},
            {**base, "metric": "decode_ctx2048_b1_tok_s", "value": 2.0}, {"ratio": {"metric": "decode_b1_tok_s"}},
            {"engine": "hf-transformers-eager", "quant": "float16", "metric": "decode_b1_tok_s", "value": 1.5},
            {"kernel": "gemv", "us_per_step": 3.0}]
    series = series_of(rows)
    assert [(s.label, s.points, s.roofline_steps_per_s) for s in series] == [
        ("ember q4f16", [(1, 3.0), (4, 12.5)], None), ("hf-transformers-eager float16", [(1, 1.5)], None)]


def test_llama_cpp_lines_as_ember_reads_them():
    lines = (RECORDED / "llamacpp.jsonl").read_text().splitlines()
    rows = parse_llama_bench_models(lines)
    # their avg_ns: Q4_0 pp128 18685797, pp512 46667715, tg128 379490855; F16 12419962, 22734834, 611295294
    assert [(r["model"], r["metric"], r["value"]) for r in rows] == [
        ("Q4_0.gguf", "prefill_pp128_tok_s", round(128e9 / 18685797, 1)),
        ("Q4_0.gguf", "prefill_pp512_tok_s", round(512e9 / 46667715, 1)), ("Q4_0.gguf", "ttft_128_ms", 18.69),
        ("Q4_0.gguf", "decode_b1_tok_s", round(128e9 / 379490855, 1)),
        ("F16.gguf", "prefill_pp128_tok_s", round(128e9 / 12419962, 1)),
        ("F16.gguf", "prefill_pp512_tok_s", round(512e9 / 22734834, 1)), ("F16.gguf", "ttft_128_ms", 12.42),
        ("F16.gguf", "decode_b1_tok_s", round(128e9 / 611295294, 1))]
    assert rows[3]["value"] == 337.3 and rows[7]["value"] == 209.4  # RESULTS.md run 1's tg128 figures
    assert rows[3]["prompt"] == 0 and rows[3]["steps"] == 128
    batched = parse_batched_bench(json.loads(line) for line in (RECORDED / "llamacpp-batched.jsonl").open())
    assert [(r["quant"], r["metric"], r["value"], r["prompt"]) for r in batched[:4]] == [
        ("Q4_0", "decode_b1_tok_s", 326.6, 128), ("Q4_0", "decode_b4_tok_s", 930.5, 128),
        ("Q4_0", "decode_b16_tok_s", 2199.8, 128), ("Q4_0", "decode_b64_tok_s", 4923.9, 128)]


def test_png_from_recorded_rows(tmp_path):
    out = tmp_path / "decode.png"
    series = plot_rows(read_rows(sorted(RECORDED.glob("*.jsonl"))), out)
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    assert struct.unpack(">II", data[16:24]) == (800, 500)  # figsize 8 x 5 at 100 dpi
    assert len(data) > 20_000 and len(series) == 5  # seven lines and points, five rooflines' worth of pixels


def test_no_rows_and_bad_files(tmp_path):
    with pytest.raises(InputError, match="no decode_b"):
        plot_rows([{"metric": "ttft_128_ms", "value": 1.0}], tmp_path / "x.png")
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    with pytest.raises(InputError, match="not JSON lines"):
        read_rows([tmp_path / "bad.jsonl"])
    with pytest.raises(InputError, match="no such file"):
        read_rows([tmp_path / "missing.jsonl"])
