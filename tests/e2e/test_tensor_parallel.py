"""Tensor parallelism without several GPUs: a tiny Llama compiled for cpu unsharded and with --tensor-parallel 2 and
4, the shards run in this process (one thread each, the all-reduce and all-gather done on the host by
runtime/tensor_parallel.py), give the unsharded build's logits through a chunked prefill and decode steps over each
shard's own paged KV cache; and each shard's weights are its slices of the checkpoint, in files that load alone."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from ember.compiler import CompileRequest, compile_model
from ember.errors import InputError
from ember.runtime.loader import load_artifact
from ember.runtime.model_runner import ModelRunner
from ember.runtime.tensor_parallel import ShardedRunner

PROMPT = [0, 5, 77, 300, 12, 9, 45, 101, 2, 250, 33]
SPLIT = 7  # prefill PROMPT[:SPLIT] in chunks of 3, then teacher-forced decode steps


@pytest.fixture(scope="session")
def builds(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tensor-parallel")
    torch.manual_seed(0)
    # 8 query heads over 4 kv heads: 4 shards hold one kv head and two query heads each
    hf = LlamaForCausalLM(LlamaConfig(vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=64,
                                      rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=0, eos_token_id=1,
                                      attn_implementation="eager")).eval()
    with torch.no_grad():
        for p in hf.parameters():
            if p.ndim == 2:
                p.mul_(4.0)
    hf.save_pretrained(folder / "hf")
    out = {"hf": hf, "folder": folder / "hf"}
    for quant, shards in (("q0f32", 1), ("q0f32", 2), ("q0f32", 4), ("q4f16_1", 1), ("q4f16_1", 2)):
        out[quant, shards] = compile_model(CompileRequest(model=str(folder / "hf"), target="cpu", quant=quant,
                                                          tensor_parallel=shards,
                                                          output=str(folder / f"{quant}-tp{shards}")))
    return out


def steps(runner) -> np.ndarray:
    runner.reset()
    runner.add_sequence(0)
    rows = list(runner.prefill([0], [PROMPT[:SPLIT]], all_logits=True))
    rows += [runner.decode([0], [token])[0] for token in PROMPT[SPLIT:]]
    runner.remove_sequence(0)
    return np.stack(rows)


def unsharded(path: Path) -> np.ndarray:
    return steps(ModelRunner(load_artifact(path, device="cpu"), prefill_chunk_size=3))


@pytest.mark.parametrize("quant,shards", [("q0f32", 2), ("q0f32", 4), ("q4f16_1", 2)])
def test_shards_give_the_unsharded_logits(builds, quant, shards):
    reference = unsharded(builds[quant, 1])
    got = steps(ShardedRunner(builds[quant, shards], devices="cpu", prefill_chunk_size=3))  # every shard agrees
    assert got.shape == (len(PROMPT), 320)
    np.testing.assert_allclose(got, reference, atol=1e-5 * np.abs(reference).max(), rtol=0)
    if quant == "q0f32":  # and HF's (the unsharded build is checked against it elsewhere, too)
        with torch.no_grad():
            hf = builds["hf"](torch.tensor([PROMPT])).logits[0].numpy()
        np.testing.assert_allclose(got, hf, atol=2e-5, rtol=1e-4)


def test_manifest_records_the_layout_and_each_shard_loads_alone(builds):
    path = builds["q0f32", 2]
    manifest = json.loads((path / "manifest.json").read_text())
    tp = manifest["tensor_parallel"]
    assert tp["shards"] == 2 and tp["shard_dirs"] == ["params/shard-0-of-2", "params/shard-1-of-2"]
    assert tp["collectives"]["all_reduce"] == "ember.tp.host_allreduce"
    assert tp["rank_values"] == {"model.embed_tokens.shard_start": 160}
    assert manifest["kv_cache"]["num_kv_heads"] == 2 and manifest["config"]["num_key_value_heads"] == 4
    assert "verification" not in manifest or manifest["verification"] is None
    hf = load_file(builds["folder"] / "model.safetensors")
    for rank in (0, 1):
        shard = load_file(path / tp["shard_dirs"][rank] / "params-00000.safetensors")
        assert set(shard) == {p["name"] for p in manifest["params"]}
        q = hf["model.layers.1.self_attn.q_proj.weight"][32 * rank:32 * (rank + 1)]
        np.testing.assert_array_equal(shard["model.layers.1.self_attn.qkv_proj.weight"][:32], q)
        np.testing.assert_array_equal(shard["model.layers.0.mlp.down_proj.weight"],
                                      hf["model.layers.0.mlp.down_proj.weight"][:, 64 * rank:64 * (rank + 1)])
        np.testing.assert_array_equal(shard["lm_head.weight"], hf["lm_head.weight"][160 * rank:160 * (rank + 1)])
        assert shard["model.embed_tokens.shard_start"].tolist() == [160 * rank]
        assert tp["layout"]["model.layers.0.mlp.down_proj.weight"] == "row"
    loaded = load_artifact(path, device="cpu", shard=1)  # one shard, on its own
    assert [tuple(t.shape) for t in loaded.params][:1] == [(160, 64)]


def test_a_sharded_artifact_is_refused_without_a_shard(builds):
    path = builds["q0f32", 2]
    with pytest.raises(InputError, match="is split into 2 tensor-parallel shards: run it on 2 devices"):
        load_artifact(path, device="cpu")
    with pytest.raises(InputError, match=r"shard 2: artifact .* has shards 0..1"):
        load_artifact(path, device="cpu", shard=2)
    with pytest.raises(InputError, match="is not split for tensor parallelism"):
        load_artifact(builds["q0f32", 1], device="cpu", shard=0)


def test_random_weights_fill_each_shard(builds, tmp_path):
    """A benchmark build's shards fill their own split weights, the same replicated ones and their exact rank
    values (the q0f32 build made a random-weights one by its manifest: no compile)."""
    from ember.runtime.artifact import manifest_digest

    path = tmp_path / "random"
    shutil.copytree(builds["q0f32", 2], path, ignore=shutil.ignore_patterns("params"))
    raw = json.loads((path / "manifest.json").read_text())
    raw["weights"] = "random"
    raw["files"] = {k: v for k, v in raw["files"].items() if not k.startswith("params/")}
    raw["sizes"] = {k: v for k, v in raw["sizes"].items() if not k.startswith("params/")}
    for p in raw["params"]:
        p["file"] = None
    raw["manifest_sha256"] = manifest_digest(raw)
    (path / "manifest.json").write_text(json.dumps(raw))
    runner = ShardedRunner(path, devices="cpu")
    params = [r.artifact.params for r in runner.runners]
    names = [p.name for p in runner.manifest.params]
    start = names.index("model.embed_tokens.shard_start")
    assert [int(p[start].numpy()[0]) for p in params] == [0, 160]
    head = names.index("lm_head.weight")
    assert not np.array_equal(params[0][head].numpy(), params[1][head].numpy())  # split: each shard its own
    assert np.isfinite(steps(runner)).all()


def test_ember_run_with_devices_generates_what_the_unsharded_build_does(builds):
    from click.testing import CliRunner

    from ember.runtime.commands import run

    args = ["--prompt-ids", "0,5,77,300", "--max-tokens", "6", "--json"]
    outputs = []
    for path, extra in ((builds["q0f32", 1], []), (builds["q0f32", 4], ["--devices", "cpu"])):
        result = CliRunner().invoke(run, [str(path), *args, *extra])
        assert result.exit_code == 0, result.output
        outputs.append(json.loads(result.output.strip().splitlines()[-1])["token_ids"])
    assert outputs[0] == outputs[1] and len(outputs[0]) == 6
    result = CliRunner().invoke(run, [str(builds["q0f32", 4]), *args, "--devices", "cuda:0-1"])
    assert result.exit_code == 1 and "artifact hf was built for cpu" in result.output


def test_serving_a_sharded_artifact_answers_as_the_unsharded_one(builds):
    """`ember serve --devices`: the server's own KV caches on every shard (ShardedRunner.sibling), prefix-cache
    forks on every shard, batched requests, the same tokens as the unsharded build's server."""
    import asyncio

    from ember.runtime.serving.async_engine import AsyncEngine

    prompts = [[0, 5, 77, 300, 12], [0, 5, 77, 300, 12, 9, 45], [3, 4]]  # the second shares the first's prefix

    async def answers(engine):
        first = await engine.complete(prompts[0], max_tokens=5)  # finished: kept for the next to fork
        rest = await asyncio.gather(*(engine.complete(p, max_tokens=5) for p in prompts[1:]))
        return [o.token_ids for o in (first, *rest)]

    got = []
    for path, devices in ((builds["q0f32", 1], None), (builds["q0f32", 2], "cpu")):
        with AsyncEngine.load(path, max_seqs=4, devices=devices) as engine:
            got.append(asyncio.run(answers(engine)))
            hits = engine.stats()["prefix_cache_hits"]
    assert got[0] == got[1] and all(len(t) == 5 for t in got[0])
    assert hits >= 1
