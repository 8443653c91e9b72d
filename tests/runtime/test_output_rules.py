"""The --output rule (runtime/output_rules.py) through ArtifactWriter: what ember writes, replaces and refuses.

Artifacts here are small hand-made ones (a manifest and two files): the rule is about folders, not models."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from ember.errors import ArtifactError
from ember.runtime import artifact as art
from ember.runtime.output_rules import check_destination, foreign_entry


def manifest(note: str = "") -> art.Manifest:
    return art.Manifest(
        name="fake", architecture="llama", config={}, quantization="q0f32", compute_dtype="float32",
        target=art.TargetInfo(kind="cpu"), vocab_size=8, context_length=16, functions=[], params=[],
        kv_cache=art.KVCacheInfo(num_layers=1, num_attention_heads=1, num_kv_heads=1, head_dim=2, dtype="float32"),
        notes=[note] if note else [])


def write(path: Path, content: str = "old", replace: bool = False) -> Path:
    with art.ArtifactWriter(path, replace=replace) as writer:
        (writer.path / art.LIBRARY_FILE).write_text(content)
        (writer.path / art.PARAMS_DIR).mkdir()
        (writer.path / art.PARAMS_DIR / "params-00000.safetensors").write_text(content)
        return writer.commit(manifest(content))


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_new_folder_and_its_parents_are_made(tmp_path):
    out = write(tmp_path / "a" / "b" / "art")
    assert art.read_manifest(out).notes == ["old"] and foreign_entry(out) is None
    assert leftovers(out.parent) == []


def test_an_empty_folder_is_used(tmp_path):
    (tmp_path / "empty").mkdir()
    out = write(tmp_path / "empty")
    assert (out / art.LIBRARY_FILE).read_text() == "old"


def test_a_folder_with_a_users_file_survives(tmp_path):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("mine")
    for replace in (False, True):
        with pytest.raises(ArtifactError, match=r"^output .*precious: exists and is not an ember artifact "
                                                r"\(it holds notes.txt and no ember manifest.json\)") as caught:
            write(precious, replace=replace)
        assert caught.value.cli_message.startswith(f"--output {precious}: ")
    assert snapshot(precious) == {"notes.txt": b"mine"}
    assert leftovers(tmp_path) == []


def test_an_artifact_holding_a_users_file_is_not_replaced_even_with_force(tmp_path):
    out = write(tmp_path / "art")
    (out / "params" / "mine.txt").write_text("mine")
    before = snapshot(out)
    with pytest.raises(ArtifactError, match=r"it holds params/mine.txt, which ember did not write"):
        write(out, "new", replace=True)
    (out / "params" / "mine.txt").unlink()
    (out / "extra").mkdir()  # an empty folder ember did not make counts too
    with pytest.raises(ArtifactError, match=r"it holds extra/, which ember did not write"):
        write(out, "new", replace=True)
    del before["params/mine.txt"]
    assert snapshot(out) == before


def test_an_artifact_is_replaced_only_when_allowed(tmp_path):
    out = write(tmp_path / "art")
    with pytest.raises(ArtifactError, match=r"holds an ember artifact already; pass force=True to replace it$") as caught:
        write(out, "new")
    assert caught.value.cli_message.endswith("pass --force to replace it")
    assert art.read_manifest(out).notes == ["old"]
    write(out, "new", replace=True)
    assert art.read_manifest(out).notes == ["new"] and (out / art.LIBRARY_FILE).read_text() == "new"
    assert leftovers(tmp_path) == []  # neither the temporary folder nor the old artifact is left


def test_a_failed_build_leaves_the_old_artifact_intact(tmp_path):
    out = write(tmp_path / "art")
    before = snapshot(out)
    with pytest.raises(RuntimeError, match="kernel build failed"):
        with art.ArtifactWriter(out, replace=True) as writer:
            (writer.path / art.LIBRARY_FILE).write_text("half")
            raise RuntimeError("kernel build failed")
    assert snapshot(out) == before and leftovers(tmp_path) == []


def test_a_user_file_written_during_the_build_stops_the_replacement(tmp_path):
    out = write(tmp_path / "art")
    with pytest.raises(ArtifactError, match="it holds late.txt, which ember did not write"):
        with art.ArtifactWriter(out, replace=True) as writer:
            (writer.path / art.LIBRARY_FILE).write_text("new")
            (out / "late.txt").write_text("mine")  # while the kernels build
            writer.commit(manifest("new"))
    assert (out / "late.txt").read_text() == "mine" and art.read_manifest(out).notes == ["old"]
    assert leftovers(tmp_path) == []


def test_replacement_without_an_atomic_exchange(tmp_path, monkeypatch):
    monkeypatch.setattr(art, "_exchange", lambda a, b: False)  # e.g. a filesystem without renameat2
    out = write(tmp_path / "art")
    write(out, "new", replace=True)
    assert art.read_manifest(out).notes == ["new"] and leftovers(tmp_path) == []


def test_files_links_and_the_current_folder_are_refused(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ArtifactError, match="exists and is not a folder"):
        check_destination(tmp_path / "file", replace=True)
    with pytest.raises(ArtifactError, match=r"file is not a folder"):
        check_destination(tmp_path / "file" / "art", replace=True)
    out = write(tmp_path / "art")
    os.symlink(out, tmp_path / "link")
    with pytest.raises(ArtifactError, match="is a symbolic link"):
        check_destination(tmp_path / "link", replace=True)
    monkeypatch.chdir(out / art.PARAMS_DIR)  # inside an artifact: neither it nor its parents may go
    for path in (".", "..", str(tmp_path)):
        with pytest.raises(ArtifactError, match="is the current folder or holds it"):
            check_destination(path, replace=True)
    assert (out / art.MANIFEST_FILE).is_file() and foreign_entry(out) is None


def test_default_paths_are_named_as_paths(tmp_path):
    (tmp_path / "compiled").mkdir()
    (tmp_path / "compiled" / "x.txt").write_text("x")
    with pytest.raises(ArtifactError, match=r"^.*compiled: exists and is not an ember artifact") as caught:
        check_destination(tmp_path / "compiled", replace=True, label="")
    assert "output" not in str(caught.value) and "--output" not in caught.value.cli_message
