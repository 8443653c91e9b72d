"""Shipping an artifact (issue 14): integrity on every load (before anything is mapped or dlopen'ed), the full
check with its progress, file modes that follow the umask, the format compatibility rule, and the committed
artifact of the current format (tests/data/compat-v<N>/, made by tools/make_compat_artifact.py), which today's
runtime must load and run."""
from __future__ import annotations

import json
import os
import platform
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ember.errors import ArtifactError
from ember.runtime import artifact as art
from ember.runtime.engine import Engine

from test_runtime_load import edit_manifest

DATA = Path(__file__).resolve().parents[1] / "data"
COMPAT = DATA / f"compat-v{art.FORMAT_VERSION}"
COMMITTED = sorted(DATA.glob("compat-v*"))  # this format's artifact and the previous one's, while it is read


def ember(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ember.cli", *args], capture_output=True, text=True, timeout=300)


# -- integrity before loading ----------------------------------------------------------------------------------------
def test_truncated_library_is_one_line_and_no_signal(artifact_copy):
    """A model.so cut short (an interrupted copy) is refused by its size before dlopen: mapping it would SIGBUS."""
    lib = artifact_copy / "model.so"
    size = lib.stat().st_size
    with open(lib, "r+b") as handle:
        handle.truncate(size // 2)
    done = ember("run", str(artifact_copy), "--prompt-ids", "0,5", "-n", "2")
    assert done.returncode == 1  # an error exit, not a signal (negative) or SIGBUS's 135
    assert done.stderr == (f"error: {artifact_copy}: model.so has {size // 2} bytes, the manifest says {size} "
                           "(truncated or replaced)\n")


@pytest.mark.parametrize("edit", ["sha256", "config"])
def test_edited_manifest_fields_are_refused_on_every_load(artifact_copy, edit):
    def change(raw):
        if edit == "sha256":
            raw["files"]["model.so"] = "0" * 64
        else:
            raw["config"]["rms_norm_eps"] = 0.5

    edit_manifest(artifact_copy, reseal=False, fix=change)
    done = ember("run", str(artifact_copy), "--prompt-ids", "0,5", "-n", "2")
    assert done.returncode == 1
    assert done.stderr == (f"error: {artifact_copy / 'manifest.json'}: edited after the compile (its content does "
                           "not match its manifest_sha256)\n")


def test_a_file_the_runtime_opens_must_be_listed(artifact_copy):
    edit_manifest(artifact_copy, fix=lambda raw: [raw[k].pop("model.so") for k in ("files", "sizes")])
    with pytest.raises(ArtifactError, match=r"model\.so is not listed in the manifest's files \(it cannot be "
                                            r"checked\)$"):
        Engine.load(artifact_copy)


def test_full_check_streams_with_progress(artifact_copy):
    calls: list[tuple[int, int, str]] = []
    Engine.load(artifact_copy, verify=True, verify_progress=lambda done, total, rel: calls.append((done, total, rel)))
    total = sum((artifact_copy / rel).stat().st_size for rel in json.loads(
        (artifact_copy / "manifest.json").read_text())["files"])
    assert calls[-1][:2] == (total, total)
    assert [c[0] for c in calls] == sorted(c[0] for c in calls) and {c[1] for c in calls} == {total}


# -- modes -----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("umask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)])
def test_artifact_modes_follow_the_umask(tmp_path, umask, file_mode, dir_mode):
    from safetensors.numpy import save_file

    previous = os.umask(umask)
    try:
        with art.ArtifactWriter(tmp_path / "out") as writer:
            (writer.path / "params").mkdir()
            save_file({"w": np.zeros(4, np.float32)}, str(writer.path / "params" / "w.safetensors"))  # 0600 itself
            (writer.path / "model.so").write_bytes(b"\x7fELF")
            os.chmod(writer.path / "model.so", 0o755)
            manifest = art.Manifest(name="m", architecture="llama", config={}, quantization="q0f32",
                                    compute_dtype="float32", target=art.TargetInfo(kind="cpu"),
                                    kv_cache=art.KVCacheInfo(1, 1, 1, 1, "float32"), vocab_size=1, context_length=1,
                                    functions=[], params=[])
            out = writer.commit(manifest)
    finally:
        os.umask(previous)
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(out / "params" / "w.safetensors") == file_mode and mode(out / "manifest.json") == file_mode
    assert mode(out) == dir_mode and mode(out / "params") == dir_mode
    assert mode(out / "model.so") == 0o777 & ~umask  # the library keeps its execute bits


# -- the compatibility rule ------------------------------------------------------------------------------------------
def as_format_2(folder: Path) -> None:
    """Rewrite an artifact's manifest as format 2 wrote it: no kv_cache.window_in_kernels."""
    def older(raw):
        raw["format_version"] = 2
        raw["kv_cache"].pop("window_in_kernels")

    edit_manifest(folder, fix=older)


def test_the_previous_format_still_loads(artifact_copy, engine, prompt_ids):
    as_format_2(artifact_copy)
    old = Engine.load(artifact_copy)
    assert old.manifest.format_version == 2 and not old.manifest.kv_cache.window_in_kernels
    ids = prompt_ids(7)
    np.testing.assert_array_equal(old.score(ids), engine.score(ids))


@pytest.mark.parametrize("version, words", [(art.FORMAT_VERSION + 1, "newer"), (art.FORMAT_VERSION - 2, "older")])
def test_other_formats_are_refused_naming_who_reads_them(artifact_copy, version, words):
    edit_manifest(artifact_copy, format_version=version, fix=lambda raw: raw["versions"].update(ember="9.1.0"))
    import ember

    lo, hi = art.READABLE_FORMATS
    later = " or later" if words == "newer" else ""
    msg = (f"{artifact_copy / 'manifest.json'}: format_version {version} is {words} than this ember "
           f"({ember.__version__}) reads ({lo} and {hi}); load it with ember 9.1.0{later}, or recompile it with "
           "this one")
    with pytest.raises(ArtifactError, match=f"^{re.escape(msg)}$"):
        Engine.load(artifact_copy)


# -- the committed artifact ------------------------------------------------------------------------------------------
needs_x86 = pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64") or sys.platform != "linux",
                               reason="the committed artifact is a Linux x86-64 build")


@needs_x86
@pytest.mark.parametrize("committed", COMMITTED, ids=lambda p: p.name)
def test_the_committed_artifacts_load_and_run(committed):
    """If this fails after a change, that change broke artifacts already shipped: keep reading them (the rule),
    or bump FORMAT_VERSION, keep reading the previous one, and add a compat artifact of the new one."""
    expected = json.loads((committed / "expected.json").read_text())
    engine = Engine.load(committed / "artifact", verify=True)  # every sha256 as committed
    version = int(committed.name.removeprefix("compat-v"))
    assert engine.manifest.format_version == version and engine.manifest.build is not None
    assert engine.encode(expected["prompt"]) == expected["prompt_ids"]
    result = engine.generate(expected["prompt"], max_tokens=expected["max_tokens"])
    assert list(result.token_ids) == expected["token_ids"]


@needs_x86
def test_the_committed_artifact_passes_ember_verify():
    done = ember("verify", str(COMPAT / "artifact"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "numerics  pass" in done.stdout and done.stdout.splitlines()[-1] == "ok"


def test_the_committed_artifacts_are_of_formats_this_runtime_reads():
    found = sorted(int(p.name.removeprefix("compat-v")) for p in DATA.glob("compat-v*"))
    assert art.FORMAT_VERSION in found and all(v in art.READABLE_FORMATS for v in found), found
