"""`ember bundle` (bundle.py, runtime/device_cli.py): the bundle of the committed format-2 artifact runs from its
own launcher with no site-packages at all (`python -S`, an empty environment) and gives the greedy tokens the
artifact was committed with; it holds no compiler side; bad arguments are one line and write nothing."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

COMPAT = Path(__file__).resolve().parents[1] / "data" / "compat-v2"


def _ember(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ember.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("b") / "bundle"
    done = _ember("bundle", str(COMPAT / "artifact"), "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert "runtime" in done.stdout and "MiB" in done.stdout
    return out


def test_bundle_runs_alone_and_matches_the_committed_tokens(bundle):
    expected = json.loads((COMPAT / "expected.json").read_text())
    env = {"PATH": "/usr/bin:/bin", "EMBER_PYTHON": sys.executable, "HOME": os.environ.get("HOME", "/tmp")}
    ids = ",".join(str(i) for i in expected["prompt_ids"])
    done = subprocess.run([str(bundle / "bin" / "ember"), "run", str(bundle / "artifact"), "--prompt-ids", ids, "-n",
                           str(expected["max_tokens"]), "--json"], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1])["token_ids"] == expected["token_ids"]
    helped = subprocess.run([str(bundle / "bin" / "ember"), "--help"], capture_output=True, text=True, env=env)
    commands = [line.split()[0] for line in helped.stdout.split("Commands:")[1].splitlines() if line.strip()]
    assert commands == sorted(["bench", "chat", "eval", "run", "serve", "verify"])


def test_bundle_holds_the_runtime_and_no_compiler(bundle):
    info = json.loads((bundle / "BUNDLE.json").read_text())
    assert info["python"] == f"{sys.version_info.major}.{sys.version_info.minor}" and info["artifact"]
    assert info["runtime_bytes"] > 0 and "apache-tvm" in info["distributions"]
    lib = bundle / "lib"
    assert (lib / "ember" / "runtime" / "engine.py").is_file() and (lib / "tvm").is_dir()
    for absent in ("ember/frontend", "ember/passes", "ember/targets", "ember/compiler.py", "tvm/lib/libtvm_compiler.so",
                   "tvm/include", "numpy/f2py"):
        assert not (lib / absent).exists(), absent
    assert not [p for p in lib.rglob("tests") if p.is_dir()]
    assert (lib / "ember" / "runtime" / "__pycache__").is_dir()  # compiled at bundle time, for this Python
    assert sorted(p.name for p in (bundle / "artifact").iterdir()) == sorted(
        p.name for p in (COMPAT / "artifact").iterdir())


def test_wrong_python_is_refused_by_the_launcher(bundle, tmp_path):
    fake = tmp_path / "python3"
    fake.write_text("#!/bin/sh\necho 2.7\n")
    fake.chmod(0o755)
    done = subprocess.run([str(bundle / "bin" / "ember"), "--help"], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "EMBER_PYTHON": str(fake)})
    assert done.returncode == 2 and "needs Python" in done.stderr


def test_bad_arguments_are_one_line_and_write_nothing(tmp_path):
    missing = _ember("bundle", str(tmp_path / "nope"), "-o", str(tmp_path / "out"))
    assert missing.returncode != 0 and not (tmp_path / "out").exists()
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "mine.txt").write_text("keep")
    refused = _ember("bundle", str(COMPAT / "artifact"), "-o", str(occupied))
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1 and "--output" in refused.stderr
    assert [p.name for p in occupied.iterdir()] == ["mine.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left


def test_artifacts_for_another_machine_are_refused(tmp_path, monkeypatch):
    import platform

    from ember.bundle import BundleError, make_bundle

    monkeypatch.setattr(platform, "machine", lambda: "riscv64")
    with pytest.raises(BundleError, match="bundles are made for this machine"):
        make_bundle(COMPAT / "artifact", tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.iterdir())
