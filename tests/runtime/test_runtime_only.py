"""The runtime in a fresh process with TVM's runtime library only, and the click commands."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from click.testing import CliRunner

from ember.runtime.commands import chat, run

RUNTIME_ONLY_SCRIPT = r"""
import json, sys
import ember
engine = ember.load(sys.argv[1], device="cpu")
result = engine.generate([int(t) for t in sys.argv[2].split(",")], max_tokens=8)
maps = open("/proc/self/maps").read()
print(json.dumps({
    "token_ids": result.token_ids,
    "modules": sorted(m for m in sys.modules if m == "torch" or m.startswith(("torch.", "tvm.relax", "ember.frontend",
                                                                          "ember.passes", "ember.targets"))),
    "libtvm_compiler": "libtvm_compiler" in maps,
    "libtvm_runtime": "libtvm_runtime.so" in maps,
}))
"""


def test_runtime_only_process_loads_and_generates(engine, tiny, prompt_ids):
    ids = prompt_ids(7)
    env = dict(os.environ, TVM_USE_RUNTIME_LIB="1")
    proc = subprocess.run(
        [sys.executable, "-c", RUNTIME_ONLY_SCRIPT, str(tiny.path), ",".join(map(str, ids))],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["modules"] == []
    assert out["libtvm_compiler"] is False and out["libtvm_runtime"] is True
    assert out["token_ids"] == engine.generate(ids, max_tokens=8).token_ids


def test_run_json(engine, tiny):
    result = CliRunner().invoke(run, [str(tiny.path), "--prompt", "hello world", "--max-tokens", "6", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    want = engine.generate("hello world", max_tokens=6)
    assert out["token_ids"] == want.token_ids and out["text"] == want.text
    assert out["prompt_tokens"] == want.prompt_tokens and out["finish_reason"] == "length"
    assert out["ttft_s"] > 0 and out["decode_tokens_per_s"] > 0 and out["random_weights"] is False
    assert out["artifact"] == "tiny-llama"


def test_run_streams_text_and_summarises_on_stderr(engine, tiny):
    args = [str(tiny.path), "-p", "hello", "-n", "5", "--temperature", "0.8", "--top-k", "20", "--seed", "3"]
    result = CliRunner().invoke(run, args)
    assert result.exit_code == 0, result.output
    want = engine.generate("hello", max_tokens=5, temperature=0.8, top_k=20, seed=3)
    assert result.stdout == want.text + "\n"
    assert "TTFT" in result.stderr and "decode" in result.stderr and "random weights" not in result.stderr


def test_run_with_prompt_ids(engine, tiny):
    result = CliRunner().invoke(run, [str(tiny.path), "--prompt-ids", "0,17,42", "-n", "4", "--json"])
    assert json.loads(result.stdout)["token_ids"] == engine.generate([0, 17, 42], max_tokens=4).token_ids


def test_errors_are_one_line(tiny, tmp_path):
    result = CliRunner().invoke(run, [str(tmp_path / "nope"), "--prompt", "x"])
    assert result.exit_code == 1
    assert result.stderr == f"error: {tmp_path / 'nope'}: no such artifact folder\n"
    result = CliRunner().invoke(run, [str(tiny.path), "--prompt-ids", "0,999"])
    assert result.exit_code == 1
    assert result.stderr == ("error: --prompt-ids: token id 999 at position 1 is outside the vocabulary [0, 320) "
                             "of tiny-llama\n")  # checked against the manifest, before the model loads
    result = CliRunner().invoke(run, [str(tiny.path), "--prompt", "x", "--top-p", "0"])
    assert result.exit_code == 1 and result.stderr.startswith("error: --top-p must be in (0, 1]")
    result = CliRunner().invoke(run, [str(tiny.path), "--prompt-ids", "0,999", "--verbose"])
    assert result.exit_code == 1 and type(result.exception).__name__ == "InputError"  # raised, with traceback


def test_chat_one_shot_and_interactive(engine, tiny):
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]
    want = engine.chat(messages, max_tokens=6)
    result = CliRunner().invoke(chat, [str(tiny.path), "-m", "hello", "--system", "be brief", "-n", "6"])
    assert result.exit_code == 0, result.output
    assert result.stdout == want.text + "\n"
    # interactive: the second turn sees the first reply in its history; /reset forgets; EOF ends the loop
    first = engine.chat([{"role": "user", "content": "hi"}], max_tokens=3)
    history = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": first.text}]
    second = engine.chat(history + [{"role": "user", "content": "ok"}], max_tokens=3)
    third = engine.chat([{"role": "user", "content": "ok"}], max_tokens=3)
    assert second.token_ids != third.token_ids  # so the history check below means something
    result = CliRunner().invoke(chat, [str(tiny.path), "-n", "3"], input="hi\nok\n/reset\nok\n")
    assert result.exit_code == 0, result.output
    assert result.stdout == f"> {first.text}\n> {second.text}\n> > {third.text}\n> \n"
