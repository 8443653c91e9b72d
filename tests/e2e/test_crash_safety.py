"""Crash safety of `ember compile` (issue 14, part 6): SIGKILL or SIGTERM at any phase leaves no folder at the
output path; SIGTERM also removes the temporary folder (exit 143), and whatever SIGKILL left (`.<name>.tmp-*`, the
lock) is removed by the next compile; two compiles racing for one output end with one artifact and one clear error.
Each compile runs in a subprocess that signals itself on entering a phase, so the phase is exact."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# Runs `ember compile` with one compile function wrapped: on its call number `at`, the process sends itself `sig`
# (or sleeps `sleep` seconds) before the function runs.
SCRIPT = r"""
import os, sys, time, signal, json
from ember import compiler, golden
from ember.runtime import artifact, shards
spec = json.loads(sys.argv[1])
owner = {"compiler": compiler, "golden": golden, "ShardWriter": shards.ShardWriter,
         "ArtifactWriter": artifact.ArtifactWriter}[spec["owner"]]
original = getattr(owner, spec["function"])
calls = [0]
def wrapped(*args, **kwargs):
    calls[0] += 1
    if calls[0] == spec.get("at", 1):
        if spec.get("sleep"):
            print("holding the lock", file=sys.stderr, flush=True)
            time.sleep(spec["sleep"])
        else:
            os.kill(os.getpid(), spec["signal"])
            time.sleep(5)  # the handler runs at the next bytecode; never get further
    return original(*args, **kwargs)
setattr(owner, spec["function"], wrapped)
from ember.cli import main
sys.argv = ["ember", "compile"] + spec["args"]
main()
"""

PHASES = {  # phase -> the function entered at its start
    "kernel build": ("compiler", "_build", 1),
    "weights, mid-shard": ("ShardWriter", "write", 3),  # two tensors of the shard on disk already
    "golden outputs": ("golden", "record", 1),
    "commit": ("ArtifactWriter", "commit", 1),
}


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1)
    folder = tmp_path_factory.mktemp("crash") / "tiny-hf"
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def compile_with(hf_dir: Path, out: Path, owner: str, function: str, *, at: int = 1, sig: int | None = None,
                 sleep: float | None = None, wait: bool = True):
    spec = {"owner": owner, "function": function, "at": at, "signal": sig, "sleep": sleep,
            "args": ["--model", str(hf_dir), "--target", "cpu", "-o", str(out)]}
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, json.dumps(spec)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=out.parent)
    if not wait:
        return proc
    stdout, stderr = proc.communicate(timeout=600)
    return proc.returncode, stdout, stderr


def compile_plainly(hf_dir: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ember.cli", "compile", "--model", str(hf_dir), "--target", "cpu",
                           "-o", str(out)], capture_output=True, text=True, timeout=600, cwd=out.parent)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("phase", list(PHASES))
def test_sigkill_at_any_phase_leaves_nothing_after_the_next_compile(hf_dir, tmp_path, phase):
    owner, function, at = PHASES[phase]
    out = tmp_path / "art"
    code, _, stderr = compile_with(hf_dir, out, owner, function, at=at, sig=signal.SIGKILL)
    assert code == -signal.SIGKILL, stderr[-2000:]
    assert not out.exists()
    left = leftovers(tmp_path)  # what SIGKILL cannot clean: the temporary folder (once made) and the lock file
    assert all(name.startswith(".art.tmp-") or name == ".art.lock" for name in left), left
    assert any(name.startswith(".art.tmp-") for name in left), left  # the writer exists from the kernel build on
    done = compile_plainly(hf_dir, out)
    assert done.returncode == 0, done.stderr[-2000:]
    assert leftovers(tmp_path) == [] and (out / "manifest.json").is_file()


@pytest.mark.parametrize("phase", ["kernel build", "commit"])
def test_sigterm_removes_the_temporary_folder(hf_dir, tmp_path, phase):
    owner, function, at = PHASES[phase]
    out = tmp_path / "art"
    code, _, stderr = compile_with(hf_dir, out, owner, function, at=at, sig=signal.SIGTERM)
    assert code == 128 + signal.SIGTERM, stderr[-2000:]
    assert stderr.strip().splitlines()[-1] == ("error: terminated (SIGTERM); the compile's temporary folder was "
                                                "removed, nothing was written")
    assert not out.exists() and leftovers(tmp_path) == []


def test_racing_compiles_make_one_artifact_and_one_clear_error(hf_dir, tmp_path):
    out = tmp_path / "art"
    first = compile_with(hf_dir, out, "compiler", "_build", sleep=15, wait=False)  # holds the lock 15 s
    assert "holding the lock" in _until_holding(first)
    second = compile_plainly(hf_dir, out)
    assert second.returncode == 1
    assert second.stderr.strip().splitlines()[-1] == (
        f"error: {out}: another ember process (pid {first.pid}) is writing it right now; wait for it to finish, "
        "or choose another output folder")
    stdout, stderr = first.communicate(timeout=600)
    assert first.returncode == 0, stderr[-2000:]
    assert stdout.strip() == str(out) and (out / "manifest.json").is_file() and leftovers(tmp_path) == []


def _until_holding(proc: subprocess.Popen) -> str:
    """stderr lines of `proc` up to the one saying it holds the lock."""
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if "holding the lock" in line:
            break
    return "".join(seen)
