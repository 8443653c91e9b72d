"""compile_model from Python: arguments refused before any model file is opened, tensors checked from their headers
before any kernel is built, and the --output rule with ember's default path and `force`.

Kernels are never built here: `fake_build` stands in for lowering and the TVM build (the rule under test is the
compiler's order of work and the writer's, not the kernels), so each compile takes well under a second."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from ember import compiler
from ember.compiler import CompileRequest, compile_model
from ember.errors import ArtifactError, ConfigError, EmberError, ModelFormatError
from ember.runtime import artifact as art

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "quant"))
from model_fixtures import random_llama, write_gguf  # noqa: E402


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("checks") / "tiny-hf"
    random_llama(num_hidden_layers=1, vocab_size=96, hidden_size=32, intermediate_size=64, num_attention_heads=2,
                 num_key_value_heads=1).save_pretrained(folder)
    return folder


@pytest.fixture
def fake_build(monkeypatch):
    """Lowering and the kernel build replaced by a stub library file; `calls` records that they ran."""
    calls: list[str] = []

    def lower(module, target, random_fill):
        calls.append("lower")
        return None, list(module.params)

    def build(relax_mod, target, library, options, stage):
        calls.append("build")
        Path(library).write_bytes(b"not a library")
        return art.TargetInfo(kind=target.name)

    monkeypatch.setattr(compiler, "_lower", lower)
    monkeypatch.setattr(compiler, "_build", build)
    monkeypatch.setattr(compiler, "_exported_functions", lambda relax_mod: ["decode", "prefill"])
    monkeypatch.setattr(compiler.golden, "record", lambda *args: None)  # it would run the stub library
    return calls


@pytest.fixture
def nothing_read(monkeypatch):
    """Any attempt to open the model makes the test fail."""
    def refuse(*args, **kwargs):
        raise AssertionError("the model was opened")

    monkeypatch.setattr(compiler, "resolve_model", refuse)


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("change, python, cli", [
    ({"quant": "q3f99"}, "quant 'q3f99': unknown scheme (known: q0f32", "--quant 'q3f99': unknown scheme"),
    ({"target": "cpu:sm_90"}, "target: cpu:sm_90: unknown cpu arch (use cpu for the build machine, or cpu:aarch64",
     "--target: cpu:sm_90: unknown cpu arch"),
    ({"target": "tpu"}, "target 'tpu': unknown target", "--target 'tpu'"),
    ({"target": "cuda:sm_52"}, "target: invalid cuda target 'cuda:sm_52'", "--target: invalid cuda target"),
    ({"dtype": "float8"}, "dtype 'float8': unknown compute dtype", "--dtype 'float8'"),
    ({"random_weights": True, "weights": "w"}, "random_weights=True and weights exclude each other",
     "--random-weights and --weights exclude each other"),
    ({"print_after": {"fuse_everything"}}, "print_after: no pass named fuse_everything", "--print-after: no pass"),
    ({"output": "."}, "output .: is the current folder or holds it", "--output .: is the current folder"),
])
def test_bad_arguments_fail_before_the_model_is_opened(nothing_read, change, python, cli):
    with pytest.raises(EmberError) as caught:
        compile_model(CompileRequest(model="model.gguf", **change))
    assert python in str(caught.value), str(caught.value)
    assert cli in caught.value.cli_message, caught.value.cli_message


def test_a_users_folder_is_refused_before_the_model_is_opened(nothing_read, tmp_path):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("mine")
    for force in (False, True):
        with pytest.raises(ArtifactError, match="exists and is not an ember artifact"):
            compile_model(CompileRequest(model="model.gguf", output=str(precious), force=force))
    assert [p.name for p in precious.iterdir()] == ["notes.txt"] and leftovers(tmp_path) == []


def _edited_copy(hf_dir: Path, tmp_path: Path, edit) -> Path:
    from safetensors.numpy import load_file, save_file

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text((hf_dir / "config.json").read_text())
    tensors = load_file(hf_dir / "model.safetensors")
    edit(tensors)
    save_file(tensors, bad / "model.safetensors")
    return bad


@pytest.mark.parametrize("edit, fragment", [
    (lambda t: t.update({"model.norm.weight": t["model.norm.weight"][:7]}),
     "tensor 'model.norm.weight' has shape [7], the config implies [32]"),
    (lambda t: t.pop("model.layers.0.mlp.up_proj.weight"), "tensor 'model.layers.0.mlp.up_proj.weight' is missing"),
    (lambda t: t.update({"lm_head.weight": t["lm_head.weight"].astype(np.int8)}),
     "tensor 'lm_head.weight' is stored as I8, which ember cannot convert"),
], ids=["shape", "missing", "dtype"])
def test_bad_tensors_fail_before_any_kernel_or_tensor_data(hf_dir, tmp_path, fake_build, monkeypatch, edit,
                                                          fragment):
    from ember.frontend.importers.safetensors import SafetensorsFolder

    bad = _edited_copy(hf_dir, tmp_path, edit)

    def no_data(self, name):
        raise AssertionError("tensor data was read")

    monkeypatch.setattr(SafetensorsFolder, "get", no_data)
    with pytest.raises(ModelFormatError) as caught:
        compile_model(CompileRequest(model=str(bad), output=str(tmp_path / "out")))
    assert str(caught.value).startswith(str(bad / "model.safetensors")) and fragment in str(caught.value)
    assert fake_build == [] and not (tmp_path / "out").exists()


def test_a_gguf_is_checked_from_its_header(tmp_path, fake_build, monkeypatch):
    """Resolving a GGUF and checking its tensors (type and shape, against --quant) read no tensor data."""
    from gguf import GGMLQuantizationType as Q

    from ember.frontend.importers.gguf import GGUFTensor

    path = write_gguf(tmp_path / "tiny.gguf", random_llama(num_hidden_layers=1), lambda name: Q.Q4_1)

    def no_data(self):
        raise AssertionError("tensor data was read")

    monkeypatch.setattr(GGUFTensor, "raw", no_data)
    monkeypatch.setattr(GGUFTensor, "dequantize", no_data)

    def stop(module, target, random_fill):
        raise RuntimeError("reached lowering")

    monkeypatch.setattr(compiler, "_lower", stop)
    for quant in (None, "q8f16", "q0f32"):
        with pytest.raises(RuntimeError, match="reached lowering"):
            compile_model(CompileRequest(model=str(path), quant=quant, output=str(tmp_path / "out")))


def test_the_default_path_is_replaced_and_an_explicit_one_needs_force(hf_dir, tmp_path, fake_build, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = compile_model(CompileRequest(model=str(hf_dir)))
    assert first == tmp_path / "compiled" / "tiny-hf-q0f32-cpu"
    stamp = json.loads((first / art.MANIFEST_FILE).read_text())["files"]
    again = compile_model(CompileRequest(model=str(hf_dir)))  # ember's own default path: no force needed
    assert again == first and json.loads((first / art.MANIFEST_FILE).read_text())["files"] == stamp
    with pytest.raises(ArtifactError, match=r"pass force=True to replace it"):
        compile_model(CompileRequest(model=str(hf_dir), output=str(first)))
    assert compile_model(CompileRequest(model=str(hf_dir), output=str(first), force=True)) == first
    (first / "notes.txt").write_text("mine")  # now it holds a user's file: refused, default path or not
    for request in (CompileRequest(model=str(hf_dir)), CompileRequest(model=str(hf_dir), output=str(first),
                                                                      force=True)):
        with pytest.raises(ArtifactError, match="it holds notes.txt, which ember did not write"):
            compile_model(request)
    assert (first / "notes.txt").read_text() == "mine" and leftovers(first.parent) == []


def test_force_replaces_atomically(hf_dir, tmp_path, fake_build, monkeypatch):
    out = compile_model(CompileRequest(model=str(hf_dir), output=str(tmp_path / "art")))
    before = {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def broken(relax_mod, target, library, options, stage):
        Path(library).write_bytes(b"half a library")
        raise RuntimeError("the kernel build failed midway")

    monkeypatch.setattr(compiler, "_build", broken)
    with pytest.raises(RuntimeError, match="midway"):
        compile_model(CompileRequest(model=str(hf_dir), output=str(out), force=True))
    assert {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # the old artifact, intact
    assert leftovers(tmp_path) == []

    monkeypatch.setattr(compiler, "_build", lambda relax_mod, target, library, options, stage: (
        Path(library).write_bytes(b"new library"), art.TargetInfo(kind=target.name))[1])
    compile_model(CompileRequest(model=str(hf_dir), output=str(out), force=True))
    assert (out / art.LIBRARY_FILE).read_bytes() == b"new library"
    art.verify_files(out, art.read_manifest(out))  # the new manifest describes what is there
    assert leftovers(tmp_path) == []


def test_config_errors_name_the_file_and_field(hf_dir, tmp_path, fake_build):
    for change, fragment in ((("hidden_size", "32"), "field 'hidden_size' must be a positive integer, got '32'"),
                             (("num_attention_heads", 0), "field 'num_attention_heads' must be a positive integer")):
        bad = tmp_path / f"bad-{change[0]}"
        bad.mkdir()
        config = json.loads((hf_dir / "config.json").read_text())
        config[change[0]] = change[1]
        (bad / "config.json").write_text(json.dumps(config))
        with pytest.raises(ConfigError, match=f"^{bad / 'config.json'}: {fragment}"):
            compile_model(CompileRequest(model=str(bad), output=str(tmp_path / "out")))
    assert fake_build == []
