"""`ember verify`: golden outputs recorded at compile time (golden.py), rerun and compared (runtime/verify.py).

Four tiny 3-layer Llama artifacts, compiled once per module: a packed float32 cpu build (whole model, its own library
as the reference), a packed truncation (the size threshold lowered so that the 2-layer path runs; its golden outputs
are checked against Hugging Face's model cut to 2 layers), a random-weights float16 truncation whose golden outputs
come from a separate cpu build (what a cuda or metal artifact gets), and a library with a wrong kernel (another
rms_norm eps) to swap in. Tests that edit an artifact work on a copy and re-seal its manifest.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from ember import golden
from ember.compiler import CompileRequest, compile_model
from ember.runtime.artifact import manifest_digest, sha256_file
from ember.runtime.commands import verify

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "quant"))
from model_fixtures import random_llama  # noqa: E402

SIZES = dict(num_hidden_layers=3, vocab_size=96, hidden_size=32, intermediate_size=64, num_attention_heads=2,
             num_key_value_heads=1, max_position_embeddings=128)


@pytest.fixture(scope="module")
def hf_model():
    return random_llama(seed=3, **SIZES)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("verify")


@pytest.fixture(scope="module")
def hf_dir(hf_model, work) -> Path:
    hf_model.save_pretrained(work / "hf")
    return work / "hf"


def _compile(hf: Path, out: Path, truncate: bool = False, reference_build: bool = False, **options) -> Path:
    with pytest.MonkeyPatch.context() as patch:
        if truncate:  # every model is "big": the golden outputs are a 2-layer truncation's
            patch.setattr(golden, "WHOLE_MODEL_MAX_PARAMS", 0)
        if reference_build:  # as for a cuda or metal artifact: a cpu build of the same IR computes them
            patch.setattr(golden, "_runs_here", lambda manifest: False)
        return compile_model(CompileRequest(model=str(hf), target="cpu", output=str(out), **options))


@pytest.fixture(scope="module")
def packed(hf_dir, work) -> Path:
    return _compile(hf_dir, work / "packed")


@pytest.fixture(scope="module")
def truncated(hf_dir, work) -> Path:
    return _compile(hf_dir, work / "truncated", truncate=True)


@pytest.fixture(scope="module")
def random_half(hf_dir, work) -> Path:
    return _compile(hf_dir, work / "random-f16", truncate=True, reference_build=True, random_weights=True,
                    dtype="float16", quant="q0f16")


@pytest.fixture(scope="module")
def wrong_library(hf_dir, work) -> Path:
    """The same model with another rms_norm eps: same weights, same signature, other numbers."""
    other = work / "hf-eps"
    shutil.copytree(hf_dir, other)
    config = json.loads((other / "config.json").read_text())
    config["rms_norm_eps"] = 0.5
    (other / "config.json").write_text(json.dumps(config))
    return _compile(other, work / "wrong") / "model.so"


def manifest(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def reseal(path: Path, edit=None) -> None:
    """Record the files' current sizes and sha256 (and `edit` the manifest), as a compile would have."""
    m = manifest(path)
    if edit is not None:
        edit(m)
    for rel in m["files"]:
        m["files"][rel] = sha256_file(path / rel)
        m["sizes"][rel] = (path / rel).stat().st_size
    m["manifest_sha256"] = manifest_digest(m)
    (path / "manifest.json").write_text(json.dumps(m))


def ember_verify(path: Path, *args: str):
    return CliRunner().invoke(verify, [str(path), *args])


def report(path: Path, *args: str) -> tuple[int, dict]:
    result = ember_verify(path, "--json", *args)
    return result.exit_code, json.loads(result.stdout)


def copy_of(artifact: Path, tmp_path: Path) -> Path:
    dest = tmp_path / artifact.name
    shutil.copytree(artifact, dest)
    return dest


# -- a good artifact passes ------------------------------------------------------------------------------------------
def test_packed_cpu_artifact_verifies(packed):
    info = manifest(packed)["verification"]
    assert info["layers"] is None and info["entry_points"] == {} and info["params"] == []
    assert len(info["prompt_ids"]) == golden.PROMPT_TOKENS and info["greedy_steps"] == golden.GREEDY_STEPS
    assert info["tolerance"] == golden.TOLERANCES["float32"] and info["compute_dtype"] == "float32"
    assert info["reference"].startswith("this library") and "seconds" not in info  # no timing: reproducible
    assert info["golden"] in manifest(packed)["files"]  # hashed like every other file
    result = ember_verify(packed)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[1].startswith("files     pass: 4 files")
    assert lines[2].startswith("numerics  pass: whole model, 24-token prompt + 8 greedy steps")
    assert [ln.split()[0] for ln in lines[4:7]] == ["prefill", "decode1", "decode"] and lines[-1] == "ok"


def test_json_report_fields(packed):
    code, out = report(packed)
    assert code == 0 and out["ok"] is True and out["device"] == "cpu" and out["name"] == "hf"
    assert out["files"] == {"status": "pass", "files": 4, "bytes": out["files"]["bytes"], "problems": []}
    n = out["numerics"]
    assert n["status"] == "pass" and n["layers"] is None and n["model_layers"] == 3
    assert n["prompt_tokens"] == 24 and n["greedy_steps"] == 8 and n["tolerance"] == 1e-4 and n["logit_scale"] > 0
    checks = {c["name"]: c for c in n["comparisons"]}
    assert list(checks) == ["prefill", "decode1", "decode"]
    assert checks["prefill"]["rows"] == 24 and checks["decode"]["rows"] == 8
    for c in checks.values():  # the same library on the same machine: bit for bit
        assert c["max_abs_diff"] == 0 and c["top1_agree"] == c["rows"] and c["greedy_equal"] and c["finite"]


def test_golden_outputs_are_the_model_greedy_run(packed, hf_model):
    """The golden logits are the model's (HF's, to float32 rounding), and greedy ids follow their argmax."""
    from ember.runtime.artifact import read_manifest
    from ember.runtime.golden_run import read_golden

    run = read_golden(packed, read_manifest(packed))
    with torch.no_grad():
        ref = hf_model(torch.tensor([run.prompt_ids])).logits[0].numpy()
    np.testing.assert_allclose(run.prefill, ref, atol=1e-4, rtol=1e-4)
    assert run.greedy[0] == int(ref[-1].argmax()) and run.greedy[1:] == run.decode.argmax(-1).tolist()


RUNTIME_ONLY = r"""
import json, sys
from ember.runtime.verify import verify_artifact
r = verify_artifact(sys.argv[1])
print(json.dumps({"ok": r.ok, "status": r.numerics.status, "modules": sorted(m for m in sys.modules if m == "torch"
      or m.startswith(("tvm.relax", "ember.frontend", "ember.passes", "ember.targets", "ember.golden")))}))
"""


def test_verify_runs_on_the_runtime_alone(truncated):
    env = {k: v for k, v in os.environ.items() if k not in ("TVM_NUM_THREADS", "OMP_NUM_THREADS")}
    proc = subprocess.run([sys.executable, "-c", RUNTIME_ONLY, str(truncated)], capture_output=True, text=True,
                          env={**env, "TVM_USE_RUNTIME_LIB": "1"}, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.splitlines()[-1]) == {"ok": True, "status": "pass", "modules": []}


# -- the truncation path (big models) ------------------------------------------------------------------------------
def test_truncation_entry_points_compute_the_first_layers(truncated, hf_model):
    m = manifest(truncated)
    info = m["verification"]
    assert info["layers"] == 2 and info["entry_points"] == {f: f"verify_{f}" for f in ("prefill", "decode", "decode1")}
    assert {"verify_prefill", "verify_decode", "verify_decode1"} <= set(m["functions"])
    names = [p["name"] for p in m["params"]]
    assert set(info["params"]) < set(names) and not [n for n in info["params"] if ".layers.2." in n]
    assert "model.layers.2.mlp.down_proj.weight" in names and not any(f.startswith("verify/model") for f in m["files"])
    from ember.runtime.artifact import read_manifest
    from ember.runtime.golden_run import read_golden

    run = read_golden(truncated, read_manifest(truncated))
    cut = copy.deepcopy(hf_model)
    cut.model.layers = cut.model.layers[:2]
    cut.config.num_hidden_layers = 2
    with torch.no_grad():
        ref = cut(torch.tensor([run.prompt_ids])).logits[0].numpy()
    np.testing.assert_allclose(run.prefill, ref, atol=1e-4, rtol=1e-4)
    code, out = report(truncated)
    assert code == 0 and out["numerics"]["layers"] == 2 and out["numerics"]["status"] == "pass"


def test_truncation_reads_only_its_own_weights(truncated, tmp_path):
    """Layer 2's weights (outside the truncation) are neither loaded nor compared: breaking them changes nothing."""
    from safetensors.numpy import load_file, save_file

    art = copy_of(truncated, tmp_path)
    shard = art / "params" / "params-00000.safetensors"
    tensors = load_file(shard)
    tensors["model.layers.2.mlp.down_proj.weight"] = np.full_like(tensors["model.layers.2.mlp.down_proj.weight"],
                                                                  np.nan)
    save_file(tensors, shard)
    reseal(art)
    code, out = report(art)
    assert code == 0 and out["numerics"]["status"] == "pass"


def test_random_weights_half_precision_truncation_against_a_separate_build(random_half):
    """The miniature of a cuda random-weights build: the golden outputs come from a separate cpu build (other
    kernels: TVM's generic float16 matmuls in the artifact, the native ones between casts in the reference) with the
    same counter-based fill; the device's fill must make the same weights."""
    m = manifest(random_half)
    info = m["verification"]
    assert m["weights"] == "random" and not any(f.startswith("params/") for f in m["files"])
    assert info["reference"].startswith("a cpu build of the same IR") and info["layers"] == 2
    assert info["compute_dtype"] == "float16" and info["tolerance"] == golden.TOLERANCES["float16"]
    code, out = report(random_half)
    assert code == 0, out
    checks = out["numerics"]["comparisons"]
    assert all(c["rel_diff"] <= info["tolerance"] / 10 for c in checks), checks
    assert all(c["top1_agree"] == c["rows"] for c in checks)


def test_a_reference_built_while_the_target_waits_records_the_same_goldens(hf_dir, random_half, tmp_path):
    """A cuda build hands the reference cpu build to `meanwhile` before it waits on nvcc: built ahead that way,
    the golden file is byte for byte the one of a reference built at record time."""
    from ember.targets.cpu import CpuTarget

    prepared = []
    plain_build = CpuTarget.build

    def build_calling_meanwhile(self, relax_mod, library, stage, options):
        options.meanwhile()  # as the cuda target does before waiting for nvcc
        prepared.append(True)
        return plain_build(self, relax_mod, library, stage, options)

    built = golden._build_reference
    calls = []

    def counted(*args, **kwargs):
        calls.append(prepared[:])
        return built(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(CpuTarget, "build", build_calling_meanwhile)
        patch.setattr(golden, "_build_reference", counted)
        ahead = _compile(hf_dir, tmp_path / "ahead", truncate=True, reference_build=True, random_weights=True,
                         dtype="float16", quant="q0f16")
    assert calls == [[]]  # built once, inside meanwhile (before the target's own build went on), not again
    goldens = "verify/golden.safetensors"
    assert (ahead / goldens).read_bytes() == (random_half / goldens).read_bytes()


# -- what must fail --------------------------------------------------------------------------------------------------
def test_a_corrupted_file_fails_the_file_check_naming_it(packed, tmp_path):
    art = copy_of(packed, tmp_path)
    shard = art / "params" / "params-00000.safetensors"
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0x40
    shard.write_bytes(bytes(data))
    result = ember_verify(art)
    assert result.exit_code == 1
    assert "params/params-00000.safetensors: does not match its sha256 in the manifest" in result.stdout
    assert "numerics  skipped: the files do not match the manifest" in result.stdout
    assert result.stdout.splitlines()[-1] == "FAILED"
    (art / "ir.txt").unlink()
    code, out = report(art)
    assert code == 1 and out["files"]["status"] == "fail" and out["files"]["problems"][0] == "ir.txt: missing"


@pytest.mark.parametrize("change, fragment", [(1.5, "<- over tolerance"), (np.nan, "not finite (NaN or inf")],
                         ids=["scaled", "nan"])
def test_wrong_weights_fail_the_numerics(packed, tmp_path, change, fragment):
    from safetensors.numpy import load_file, save_file

    art = copy_of(packed, tmp_path)
    shard = art / "params" / "params-00000.safetensors"
    tensors = load_file(shard)
    tensors["model.norm.weight"] = tensors["model.norm.weight"] * np.float32(change)
    save_file(tensors, shard)
    reseal(art)  # the files now match the manifest: only the numerics can tell
    result = ember_verify(art)
    assert result.exit_code == 1 and "files     pass" in result.stdout and "numerics  FAIL" in result.stdout
    assert result.stdout.count(fragment) == 3 and result.stdout.splitlines()[-1] == "FAILED"
    code, out = report(art)  # strict JSON: no NaN or Infinity in it
    assert code == 1 and json.loads(ember_verify(art, "--json").stdout, parse_constant=pytest.fail)


def test_a_wrong_kernel_fails_the_numerics(packed, wrong_library, tmp_path):
    art = copy_of(packed, tmp_path)
    shutil.copyfile(wrong_library, art / "model.so")
    reseal(art)
    code, out = report(art)
    assert code == 1 and out["files"]["status"] == "pass" and out["numerics"]["status"] == "fail"
    assert all(c["rel_diff"] > 1e-2 for c in out["numerics"]["comparisons"])


def test_a_damaged_golden_file_is_one_line_naming_it(packed, tmp_path):
    art = copy_of(packed, tmp_path)
    (art / "verify" / "golden.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    result = ember_verify(art, "--skip-files")
    assert result.exit_code == 1
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"error: {art / 'verify' / 'golden.safetensors'}: not a readable safetensors")
    result = ember_verify(art)  # with the file check: that file is named as corrupt
    assert result.exit_code == 1 and "verify/golden.safetensors: " in result.stdout


def test_without_golden_outputs_the_numerics_are_not_recorded(packed, tmp_path):
    art = copy_of(packed, tmp_path)
    (art / "verify" / "golden.safetensors").unlink()
    (art / "verify").rmdir()

    def drop(m: dict) -> None:
        m.pop("verification")  # as an older ember wrote it
        for key in ("files", "sizes"):
            m[key].pop("verify/golden.safetensors")

    reseal(art, drop)
    result = ember_verify(art)
    assert result.exit_code == 0, result.output
    assert "numerics  not recorded: this artifact has no golden outputs" in result.stdout
    assert result.stdout.splitlines()[-1] == "ok"


def test_unknown_device_and_wrong_target_are_one_line(packed):
    result = ember_verify(packed, "--device", "tpu")
    assert result.exit_code == 1 and result.stderr.startswith("error: unknown device 'tpu'")
    result = ember_verify(packed, "--device", "cuda", "--skip-files")
    assert result.exit_code == 1 and "cannot run on cuda" in result.stderr


# -- on the GPU ------------------------------------------------------------------------------------------------------
def _cuda_device() -> bool:
    if shutil.which("nvidia-smi") is None or shutil.which("nvcc") is None:
        return False
    return subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda_device(), reason="needs an NVIDIA GPU and nvcc")
@pytest.mark.parametrize("options", [{}, {"quant": "q4f16_1", "random_weights": True},
                                     {"quant": "q0f32", "dtype": "float32"}], ids=["q0f16", "q4f16_1-random", "f32"])
def test_a_cuda_artifact_verifies_on_the_gpu(hf_dir, tmp_path, options):
    """Compile for cuda here (golden outputs from a cpu build), verify on the GPU, in a runtime-only process."""
    out = tmp_path / "cuda"
    done = subprocess.run([sys.executable, "-c", "from ember.cli import main; main()", "compile", "--model",
                           str(hf_dir), "--target", "cuda:sm_90", "-o", str(out)]
                          + [f"--{k.replace('_', '-')}" + ("" if v is True else f"={v}") for k, v in options.items()],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    proc = subprocess.run([sys.executable, "-c", "from ember.cli import main; main()", "verify", str(out), "--device",
                           "cuda", "--json"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TVM_USE_RUNTIME_LIB": "1"})
    out_json = json.loads(proc.stdout)
    assert proc.returncode == 0 and out_json["ok"], proc.stdout + proc.stderr[-2000:]
