"""`ember bench --peer llama.cpp`: llama-bench's command line and its JSON lines, with a fake llama-bench that prints
recorded lines (no timing is checked). The command itself is run in tests/e2e/test_cli.py."""
from __future__ import annotations

import json
import stat
import sys
from pathlib import Path

import pytest

from ember.errors import InputError
from ember.runtime.bench import ratio_rows
from ember.runtime.peer_llamacpp import find_llama_bench, llama_bench_command, parse_llama_bench, run_llama_bench

# Recorded: llama-bench -m SmolLM2-135M-Instruct.Q4_1.gguf -t 2 -p 128,512 -n 0 -pg 128,64 -r 2 -o jsonl (this box)
LINES = (Path(__file__).parents[1] / "data" / "llama-bench.jsonl").read_text().splitlines()
PP128_NS, PP512_NS, PG_NS = 581059127, 2134406456, 1411472794  # their avg_ns


def test_command_line():
    cmd = llama_bench_command("/bin/llama-bench", "m.gguf", 2, [512, 16], 64, 3)
    assert cmd == ["/bin/llama-bench", "-m", "m.gguf", "-t", "2", "-p", "16,128,512", "-n", "0", "-pg", "128,64",
                   "-r", "3", "-o", "jsonl"]  # fmt: skip  (pp128 always: TTFT and the decode baseline)


def test_parse_into_ember_rows():
    rows = parse_llama_bench(["llama-bench: some log line", *LINES], [512])
    by_metric = {r["metric"]: r for r in rows}
    assert list(by_metric) == ["prefill_pp512_tok_s", "ttft_128_ms", "decode_b1_tok_s"]  # pp128 was not asked for
    assert by_metric["prefill_pp512_tok_s"]["value"] == round(512e9 / PP512_NS, 1) == 239.9
    assert by_metric["ttft_128_ms"]["value"] == round(PP128_NS / 1e6, 2) == 581.06
    assert by_metric["decode_b1_tok_s"]["value"] == round(64e9 / (PG_NS - PP128_NS), 1) == 77.1  # prompt excluded
    row = by_metric["decode_b1_tok_s"]
    assert (row["engine"], row["model"], row["quant"], row["device"], row["threads"], row["steps"]) == (
        "llama.cpp", "SmolLM2-135M-Instruct.Q4_1.gguf", "llama 256M Q4_1", "cpu", 2, 64)  # fmt: skip
    ours = [{"metric": "prefill_pp512_tok_s", "value": 119.95}, {"metric": "ttft_128_ms", "value": 290.53},
            {"metric": "decode_b1_tok_s", "value": 154.2}]  # fmt: skip
    assert [r["speedup"] for r in ratio_rows(ours, rows)] == [0.5, 2.0, 2.0]


def fake_llama_bench(tmp_path: Path, lines: list[str], code: int = 0, stderr: str = "") -> Path:
    script = tmp_path / "llama-bench"
    script.write_text(
        f"#!{sys.executable}\n"
        "import json, sys\n"
        f"open({str(tmp_path / 'argv.json')!r}, 'w').write(json.dumps(sys.argv[1:]))\n"
        f"print({chr(10).join(lines)!r})\n"
        f"sys.stderr.write({stderr!r})\n"
        f"sys.exit({code})\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script


def test_run_a_fake_llama_bench(tmp_path):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    binary = fake_llama_bench(tmp_path, LINES)
    rows = run_llama_bench(str(binary), str(gguf), 2, [128, 512], 64, 2)
    assert [r["metric"] for r in rows] == ["prefill_pp128_tok_s", "prefill_pp512_tok_s", "ttft_128_ms", "decode_b1_tok_s"]
    argv = json.loads((tmp_path / "argv.json").read_text())
    assert argv == llama_bench_command(str(binary), str(gguf), 2, [128, 512], 64, 2)[1:]


def test_failures_are_one_row(tmp_path):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    binary = fake_llama_bench(tmp_path, [], code=1, stderr="main: error: failed to load model\n")
    assert run_llama_bench(str(binary), str(gguf), 2, [512], 64, 1) == [
        {"engine": "llama.cpp", "error": "main: error: failed to load model"}]  # fmt: skip
    assert run_llama_bench(str(binary), str(tmp_path / "none.gguf"), 2, [512], 64, 1)[0]["error"].endswith(
        "none.gguf: no such GGUF file")  # fmt: skip
    with pytest.raises(InputError, match=r"--llama-bench /nope: no such file"):
        find_llama_bench("/nope")
