"""The runtime in a fresh process with TVM's runtime library only (plain Python included), the thread pool size,
and the click commands."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from ember.runtime.commands import chat, run
from ember.runtime.threads import physical_cores

RUNTIME_ONLY_SCRIPT = r"""
import json, os, sys, warnings
warnings.simplefilter("error")  # no note about the compiler may appear here
import ember
engine = ember.load(sys.argv[1], device="cpu")
result = engine.generate([int(t) for t in sys.argv[2].split(",")], max_tokens=8)
maps = open("/proc/self/maps").read()
print(json.dumps({
    "token_ids": result.token_ids,
    "modules": sorted(m for m in sys.modules if m in ("torch", "ml_dtypes") or m.startswith((
        "torch.", "tvm.relax", "ember.frontend", "ember.passes", "ember.targets"))),
    "libtvm_compiler": "libtvm_compiler" in maps,
    "libtvm_runtime": "libtvm_runtime.so" in maps,
    "env": os.environ.get("TVM_USE_RUNTIME_LIB"),
}))
"""
CLEAN = ("TVM_USE_RUNTIME_LIB", "TVM_NUM_THREADS", "OMP_NUM_THREADS")


def python(script: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    """Run a script in a fresh interpreter whose environment names no TVM setting unless given here."""
    base = {k: v for k, v in os.environ.items() if k not in CLEAN}
    proc = subprocess.run([sys.executable, "-c", script, *args], env={**base, **env}, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


@pytest.mark.parametrize("env", [{}, {"TVM_USE_RUNTIME_LIB": "1"}], ids=["plain-python", "env-set"])
def test_runtime_only_process_loads_and_generates(engine, tiny, prompt_ids, env):
    ids = prompt_ids(7)
    out = json.loads(python(RUNTIME_ONLY_SCRIPT, str(tiny.path), ",".join(map(str, ids)), **env).stdout.splitlines()[-1])
    assert out["modules"] == []  # no compiler, no torch, and ml_dtypes deferred
    assert out["libtvm_compiler"] is False and out["libtvm_runtime"] is True
    assert out["env"] == env.get("TVM_USE_RUNTIME_LIB")  # set for `import tvm` only, then restored
    assert out["token_ids"] == engine.generate(ids, max_tokens=8).token_ids


COMPILER_FIRST_SCRIPT = r"""
import json, sys, warnings
import tvm  # the caller's own import, with the compiler
import ember
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    first = ember.load(sys.argv[1]).generate([0, 5, 9], max_tokens=3).token_ids
    second = ember.load(sys.argv[1]).generate([0, 5, 9], max_tokens=3).token_ids
print(json.dumps({"warnings": [f"{w.category.__name__}: {w.message}" for w in caught], "same": first == second,
                  "relax": "tvm.relax" in sys.modules}))
"""


def test_process_with_the_compiler_keeps_it_and_says_so_once(tiny):
    out = json.loads(python(COMPILER_FIRST_SCRIPT, str(tiny.path)).stdout.splitlines()[-1])
    assert out["warnings"] == ["CompilerLoadedWarning: tvm was already imported with its compiler; ember uses it as is"]
    assert out["same"] and out["relax"]


ML_DTYPES_SCRIPT = r"""
import json, sys
import numpy as np
from ember.runtime.tvm_import import import_tvm
tvm = import_tvm()
deferred = "ml_dtypes" not in sys.modules
bits = np.array([[0x3F80, 0xC040]], dtype=np.uint16)  # bfloat16 1.0, -3.0
t = tvm.runtime.empty((1, 2), "bfloat16").copyfrom(bits)
back = t.numpy()  # needs ml_dtypes: imported now, on first use
import ml_dtypes
f8 = tvm.runtime.tensor(np.array([0.5, -2.0], dtype=ml_dtypes.float8_e4m3fn)).numpy()
print(json.dumps({"deferred": deferred, "bf16": str(back.dtype), "values": back.astype(np.float32).tolist(),
                  "f8": [str(f8.dtype), f8.astype(np.float32).tolist()]}))
"""


def test_ml_dtypes_is_deferred_but_bfloat16_and_float8_still_convert():
    out = json.loads(python(ML_DTYPES_SCRIPT).stdout.splitlines()[-1])
    assert out == {"deferred": True, "bf16": "bfloat16", "values": [[1.0, -3.0]], "f8": ["float8_e4m3fn", [0.5, -2.0]]}


THREADS_SCRIPT = r"""
import json, os, sys
import ember
from ember.runtime.threads import physical_cores
engine = ember.load(sys.argv[1])
import tvm
print(json.dumps({"pool": tvm.runtime.num_threads(), "cores": physical_cores(), "threads": engine.threads,
                  "env": os.environ.get("TVM_NUM_THREADS")}))
"""


def test_thread_pool_takes_every_physical_core_unless_told(tiny):
    out = json.loads(python(THREADS_SCRIPT, str(tiny.path)).stdout.splitlines()[-1])
    assert out["pool"] == out["cores"] == out["threads"] and out["env"] == str(out["cores"])
    out = json.loads(python(THREADS_SCRIPT, str(tiny.path), TVM_NUM_THREADS="1").stdout.splitlines()[-1])
    assert out["pool"] == out["threads"] == 1 and out["env"] == "1"


def test_physical_cores_counts_hyperthread_siblings_once(tmp_path):
    siblings = {0: "0,2", 1: "1,3", 2: "0,2", 3: "1,3"}  # 2 cores x 2 threads
    for cpu, text in siblings.items():
        (tmp_path / f"cpu{cpu}" / "topology").mkdir(parents=True)
        (tmp_path / f"cpu{cpu}" / "topology" / "thread_siblings_list").write_text(text + "\n")
    assert physical_cores({0, 1, 2, 3}, tmp_path) == 2
    assert physical_cores({0, 2}, tmp_path) == 1  # both threads of one core
    assert physical_cores({0, 1, 7}, tmp_path) == 3  # no sysfs entry for cpu7: count logical CPUs


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


RUNTIME_THEN_COMPILE_SCRIPT = r"""
import sys
import ember
from ember.compiler import CompileRequest, compile_model
from ember.errors import ConfigError
ember.load(sys.argv[1])
try:
    compile_model(CompileRequest(model="llama3.2-1b", random_weights=True, output=sys.argv[2]))
except ConfigError as err:
    print(err)
"""


def test_a_runtime_only_process_refuses_to_compile_in_one_line(tiny, tmp_path):
    out = python(RUNTIME_THEN_COMPILE_SCRIPT, str(tiny.path), str(tmp_path / "never")).stdout.strip()
    assert out.startswith("this process loaded TVM's runtime alone") and not (tmp_path / "never").exists()


def test_run_check_verifies_every_sha256(artifact_copy):
    shard = artifact_copy / "params" / "shard-1.safetensors"
    data = bytearray(shard.read_bytes())
    data[-100] ^= 0x01  # same size: only the full check sees it
    shard.write_bytes(bytes(data))
    args = [str(artifact_copy), "--prompt-ids", "0,5", "-n", "2", "--json"]
    assert CliRunner().invoke(run, args).exit_code == 0
    result = CliRunner().invoke(run, args + ["--check"])
    assert result.exit_code == 1
    assert result.stderr == (f"error: {artifact_copy}: params/shard-1.safetensors does not match its sha256 in the "
                             "manifest (corrupt or edited)\n")  # fmt: skip
