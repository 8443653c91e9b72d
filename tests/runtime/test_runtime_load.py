"""Loading: target checks, integrity (sizes + the manifest's own hash on every load, sha256 with verify=True),
corrupt or mismatched files, random-weight and library-only artifacts."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from ember.errors import ArtifactError, InputError
from ember.runtime.artifact import manifest_digest
from ember.runtime.engine import Engine
from ember.runtime.generate import RANDOM_WEIGHTS_NOTE
from ember.runtime.loader import cuda_arch_runs_on, parse_device


def edit_manifest(folder: Path, reseal: bool = True, **changes) -> dict:
    """Change the manifest; reseal=True recomputes its own hash (a consistent manifest that says something else)."""
    path = folder / "manifest.json"
    raw = json.loads(path.read_text())
    for key, value in changes.items():
        if callable(value):
            value(raw)
        else:
            raw[key] = value
    if reseal:
        raw["manifest_sha256"] = manifest_digest(raw)
    path.write_text(json.dumps(raw))
    return raw


def drop_files(raw: dict, prefix: str) -> None:
    for key in ("files", "sizes"):
        raw[key] = {k: v for k, v in raw[key].items() if not k.startswith(prefix)}


def test_cuda_artifact_on_cpu_is_refused(artifact_copy):
    edit_manifest(artifact_copy, target={"kind": "cuda", "archs": ["sm_80", "sm_90"], "host": ""})
    msg = "artifact tiny-llama was built for cuda (sm_80, sm_90); it cannot run on cpu"
    with pytest.raises(ArtifactError, match=f"^{re.escape(msg)}$"):
        Engine.load(artifact_copy, device="cpu")


def test_cpu_artifact_on_cuda_is_refused_before_touching_cuda(tiny):
    with pytest.raises(ArtifactError, match=r"^artifact tiny-llama was built for cpu \(.*\); it cannot run on cuda$"):
        Engine.load(tiny.path, device="cuda:1")


def test_artifact_for_another_host_cpu_is_refused(artifact_copy):
    import platform

    other = "aarch64-unknown-linux-gnu" if platform.machine() == "x86_64" else "x86_64-unknown-linux-gnu"
    edit_manifest(artifact_copy, target={"kind": "cpu", "archs": [], "host": other})
    with pytest.raises(ArtifactError, match=f"was built for cpu \\({other}\\), an {other.split('-')[0]} host; "
                                            f"this machine is {platform.machine()} \\(run it on "):
        Engine.load(artifact_copy)


def test_device_strings():
    assert parse_device("cpu") == ("cpu", 0)
    assert parse_device("cuda") == ("cuda", 0)
    assert parse_device("cuda:1") == ("cuda", 1)
    assert parse_device("metal") == ("metal", 0)
    with pytest.raises(InputError, match=r"unknown device 'gpu' \(use cpu, cuda, cuda:N or metal\)"):
        parse_device("gpu")


@pytest.mark.parametrize(
    "arch, cc, ok",
    [("sm_80", (8, 0), True), ("sm_80", (8, 6), True), ("sm_86", (8, 0), False), ("sm_80", (9, 0), False),
     ("sm_90", (9, 0), True), ("sm_90a", (9, 0), True), ("sm_90a", (10, 0), False), ("sm_100", (10, 0), True),
     ("sm_120", (12, 0), True), ("sm_100", (12, 0), False)],
)  # fmt: skip
def test_cuda_arch_compatibility(arch, cc, ok):
    assert cuda_arch_runs_on(arch, *cc) is ok


def test_corrupt_weight_file_is_named_with_verify(artifact_copy):
    shard = artifact_copy / "params" / "shard-1.safetensors"
    data = bytearray(shard.read_bytes())
    data[-100] ^= 0xFF  # inside the tensor data: only the checksum can tell
    shard.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"params/shard-1\.safetensors does not match its sha256"):
        Engine.load(artifact_copy, verify=True)


def test_truncated_weight_file_is_named(artifact_copy):
    shard = artifact_copy / "params" / "shard-0.safetensors"
    size = shard.stat().st_size
    shard.write_bytes(shard.read_bytes()[:1000])
    msg = f"{artifact_copy}: params/shard-0.safetensors has 1000 bytes, the manifest says {size} (truncated or replaced)"
    with pytest.raises(ArtifactError, match=f"^{re.escape(msg)}$"):
        Engine.load(artifact_copy)


def test_truncated_weight_file_without_recorded_sizes(artifact_copy):
    edit_manifest(artifact_copy, sizes={})  # a manifest from before sizes were recorded: the shard reader catches it
    shard = artifact_copy / "params" / "shard-0.safetensors"
    data = shard.read_bytes()
    shard.write_bytes(data[:20])
    with pytest.raises(ArtifactError, match=r"shard-0\.safetensors: not a readable safetensors file \(header length"):
        Engine.load(artifact_copy)
    shard.write_bytes(data[:-64])  # the header is intact, the last tensor's data is cut
    with pytest.raises(ArtifactError, match=r"shard-0\.safetensors: tensor .* has data offsets .* that do not fit"):
        Engine.load(artifact_copy)
    shard.write_bytes(b"\x10" + b"\0" * 7 + b"{not json}" + data[18:])
    with pytest.raises(ArtifactError, match=r"shard-0\.safetensors: not a readable safetensors file"):
        Engine.load(artifact_copy)


def test_grown_file_is_caught_by_its_size(artifact_copy):
    (artifact_copy / "tokenizer.json").write_text((artifact_copy / "tokenizer.json").read_text() + " ")
    with pytest.raises(ArtifactError, match=r"tokenizer\.json has \d+ bytes, the manifest says \d+"):
        Engine.load(artifact_copy)


def test_edited_manifest_is_refused(artifact_copy):
    edit_manifest(artifact_copy, reseal=False, context_length=128)
    msg = f"{artifact_copy / 'manifest.json'}: edited after the compile (its content does not match its manifest_sha256)"
    with pytest.raises(ArtifactError, match=f"^{re.escape(msg)}$"):
        Engine.load(artifact_copy)
    path = artifact_copy / "manifest.json"
    path.write_text(path.read_text()[:-20])
    with pytest.raises(ArtifactError, match=r"manifest\.json: not valid JSON"):
        Engine.load(artifact_copy)


def test_old_manifest_without_sizes_or_seal_still_loads(artifact_copy, engine, prompt_ids):
    raw = edit_manifest(artifact_copy, reseal=False, fix=lambda raw: [raw.pop("sizes"), raw.pop("manifest_sha256")])
    assert "sizes" not in raw and "manifest_sha256" not in raw
    ids = prompt_ids(9)
    np.testing.assert_array_equal(Engine.load(artifact_copy, verify=True).score(ids), engine.score(ids))


def test_same_size_bit_flip_needs_verify(artifact_copy):
    shard = artifact_copy / "params" / "shard-1.safetensors"
    data = bytearray(shard.read_bytes())
    data[-100] ^= 0x01  # one bit of one weight: same size, valid file
    shard.write_bytes(bytes(data))
    Engine.load(artifact_copy)  # the everyday check looks at sizes only
    with pytest.raises(ArtifactError, match=r"params/shard-1\.safetensors does not match its sha256 in the manifest"):
        Engine.load(artifact_copy, verify=True)


def test_weight_shape_mismatch_names_file_and_tensor(artifact_copy):
    def widen(raw):
        raw["params"][-1]["shape"][0] += 1  # lm_head.weight, in shard-1

    edit_manifest(artifact_copy, fix=widen)
    with pytest.raises(ArtifactError) as info:
        Engine.load(artifact_copy)
    assert re.search(r"params/shard-1\.safetensors: tensor lm_head\.weight has shape \[320, 64\] float32, "
                     r"the manifest says \[321, 64\] float32$", str(info.value))  # fmt: skip


def test_missing_tensor_and_library_are_named(artifact_copy):
    edit_manifest(artifact_copy, fix=lambda raw: raw["params"][0].update(name="model.embed.weight"))
    with pytest.raises(ArtifactError, match=r"shard-0\.safetensors: tensor model\.embed\.weight is missing$"):
        Engine.load(artifact_copy)
    (artifact_copy / "model.so").unlink()
    with pytest.raises(ArtifactError, match="model.so is listed in the manifest but missing"):
        Engine.load(artifact_copy)


def test_function_listed_but_not_in_the_library(artifact_copy):
    edit_manifest(artifact_copy, fix=lambda raw: raw["functions"].append("decode1"))
    with pytest.raises(ArtifactError, match="function decode1 is listed in the manifest but not in the library"):
        Engine.load(artifact_copy)


def test_random_weights_are_true_shape_and_labelled(artifact_copy, tiny, prompt_ids):
    shutil.rmtree(artifact_copy / "params")

    def randomize(raw):
        raw["weights"] = "random"
        drop_files(raw, "params/")
        for p in raw["params"]:
            p["file"] = None

    edit_manifest(artifact_copy, fix=randomize)
    one = Engine.load(artifact_copy, verify=True)
    params = {p.name: t.numpy() for p, t in zip(one.manifest.params, one.artifact.params)}
    for p in one.manifest.params:
        assert list(params[p.name].shape) == p.shape and str(params[p.name].dtype) == p.dtype
    np.testing.assert_array_equal(params["model.norm.weight"], 1.0)
    emb = params["model.embed_tokens.weight"]
    assert abs(emb.std() - 0.02) < 0.002 and abs(emb.mean()) < 0.002
    assert not np.array_equal(params["lm_head.weight"][:4], emb[:4, : params["lm_head.weight"].shape[1]])
    ids = prompt_ids(10)
    result = one.generate(ids, max_tokens=4)
    assert RANDOM_WEIGHTS_NOTE in result.summary() and RANDOM_WEIGHTS_NOTE in one.describe()
    assert result.random_weights and result.to_dict()["note"] == RANDOM_WEIGHTS_NOTE
    two = Engine.load(artifact_copy)  # fixed seed: the same weights again
    np.testing.assert_array_equal(two.score(ids), one.score(ids))


def test_library_only_artifact_takes_weights_from_the_caller(artifact_copy, engine, prompt_ids):
    from safetensors.numpy import load_file

    weights = {}
    for shard in sorted((artifact_copy / "params").glob("*.safetensors")):
        weights.update(load_file(str(shard)))
    shutil.rmtree(artifact_copy / "params")
    edit_manifest(artifact_copy, weights="none", fix=lambda raw: drop_files(raw, "params/"))
    with pytest.raises(InputError, match="artifact tiny-llama ships no weights; pass weights="):
        Engine.load(artifact_copy)
    ids = prompt_ids(12)
    mine = Engine.load(artifact_copy, weights=weights)
    np.testing.assert_array_equal(mine.score(ids), engine.score(ids))
    bad = dict(weights, **{"model.norm.weight": np.ones(3, np.float32)})
    with pytest.raises(InputError, match=r"weights\['model\.norm\.weight'\] has shape \[3\] float32"):
        Engine.load(artifact_copy, weights=bad)
    with pytest.raises(InputError, match=r"missing \['lm_head\.weight'\]"):
        Engine.load(artifact_copy, weights={k: v for k, v in weights.items() if k != "lm_head.weight"})
