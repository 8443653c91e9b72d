"""`ember` as a user runs it: one-line errors, nothing half-written, progress, inspect, run --json."""
import json
import os
import subprocess
import sys

import pytest
import torch

from ember.runtime.artifact import manifest_digest


def ember(*args, cwd=None, env=None):
    return subprocess.run([sys.executable, "-c", "from ember.cli import main; main()", *args], cwd=cwd,
                          capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=600)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1)
    folder = tmp_path_factory.mktemp("cli") / "tiny-hf"
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def artifact(hf_dir, tmp_path_factory):
    work = tmp_path_factory.mktemp("work")
    done = ember("compile", "--model", str(hf_dir), "--target", "cpu", cwd=work)
    assert done.returncode == 0, done.stderr
    path = work / "compiled" / "tiny-hf-q0f32-cpu"
    assert done.stdout.strip() == str(path)
    stages = ["reading", "tracing", "running passes", "loading TVM's compiler", "lowering to TVM",
              "building kernels for cpu (tvm.compile)", "linking model.so", "writing weights", "hashing files"]
    lines = done.stderr.splitlines()  # progress on stderr: a line before every phase that can take a second
    assert [next(i for i, line in enumerate(lines) if stage in line) for stage in stages] == sorted(
        next(i for i, line in enumerate(lines) if stage in line) for stage in stages)  # fmt: skip
    return path


def test_compile_writes_a_complete_artifact(artifact):
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert manifest["quantization"] == "q0f32" and manifest["compute_dtype"] == "float32"
    assert manifest["target"]["kind"] == "cpu" and manifest["weights"] == "packed"
    assert {"prefill", "decode", "create_kv"} <= set(manifest["functions"])
    assert manifest["versions"]["apache-tvm-ffi"] == "0.1.14.post1"
    assert set(manifest["files"]) >= {"model.so", "ir.txt", "params/params-00000.safetensors"}
    assert manifest["sizes"]["model.so"] == (artifact / "model.so").stat().st_size and manifest["manifest_sha256"]
    assert manifest["source"].endswith("tiny-hf")
    names = [p["name"] for p in manifest["params"]]
    assert "model.layers.0.self_attn.qkv_proj.weight" in names and "lm_head.weight" in names  # q/k/v fused
    assert not [p for p in artifact.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_run_json_under_runtime_only(artifact):
    done = ember("run", str(artifact), "--prompt-ids", "1,2,3", "--max-tokens", "5", "--json")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert len(out["token_ids"]) == 5 and out["prompt_tokens"] == 3


def test_inspect_and_ir(artifact):
    done = ember("inspect", str(artifact))
    assert "quantization: q0f32" in done.stdout and "target: cpu" in done.stdout
    facts = json.loads(ember("inspect", str(artifact), "--json").stdout)
    assert facts["kind"] == "artifact" and facts["quantization"] == "q0f32" and facts["target"]["kind"] == "cpu"
    ir = ember("inspect", str(artifact), "--ir")
    assert "func decode(%ids: i32[batch, 1])" in ir.stdout and "paged_attention" in ir.stdout


def test_print_after(hf_dir, tmp_path):
    done = ember("compile", "--model", str(hf_dir), "--print-after", "fuse_rope", "-o", str(tmp_path / "a"))
    assert done.returncode == 0, done.stderr
    assert "// IR after fuse_rope" in done.stdout and "rope={theta: 10000" in done.stdout


def one_line_error(done, *fragments):
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_unknown_preset(tmp_path):
    one_line_error(ember("compile", "--model", "llama9-70b", cwd=tmp_path), "unknown model 'llama9-70b'", "llama3-8b")
    assert not (tmp_path / "compiled").exists()


def test_missing_config_field(hf_dir, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    config = json.loads((hf_dir / "config.json").read_text())
    del config["num_attention_heads"]
    (bad / "config.json").write_text(json.dumps(config))
    (bad / "model.safetensors").write_bytes((hf_dir / "model.safetensors").read_bytes())
    one_line_error(ember("compile", "--model", str(bad), cwd=tmp_path), "config.json", "'num_attention_heads'")


def test_missing_tensor_and_wrong_shape_leave_nothing(hf_dir, tmp_path):
    from safetensors.numpy import load_file, save_file

    tensors = load_file(hf_dir / "model.safetensors")
    for case, edit, fragment in [
        ("missing", lambda t: t.pop("model.layers.0.mlp.up_proj.weight"), "'model.layers.0.mlp.up_proj.weight' is missing"),
        ("shape", lambda t: t.update({"model.norm.weight": t["model.norm.weight"][:7]}), "has shape [7]"),
    ]:
        bad = tmp_path / case
        bad.mkdir()
        (bad / "config.json").write_text((hf_dir / "config.json").read_text())
        copy = dict(tensors)
        edit(copy)
        save_file(copy, bad / "model.safetensors")
        done = ember("compile", "--model", str(bad), cwd=tmp_path)
        one_line_error(done, "model.safetensors", fragment)
        compiled = tmp_path / "compiled"
        assert not compiled.exists() or not list(compiled.iterdir())  # nothing half-written


def test_artifact_for_another_target(artifact, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    for item in artifact.iterdir():
        if item.is_file():
            (other / item.name).write_bytes(item.read_bytes())
    manifest = json.loads((artifact / "manifest.json").read_text())
    manifest["target"] = {"kind": "cuda", "archs": ["sm_90"], "host": "llvm"}
    manifest["manifest_sha256"] = manifest_digest(manifest)  # a consistent manifest for another target
    (other / "manifest.json").write_text(json.dumps(manifest))
    one_line_error(ember("run", str(other), "--prompt-ids", "1"), "built for cuda (sm_90)", "cannot run on cpu")


def test_token_id_outside_vocabulary(artifact):
    one_line_error(ember("run", str(artifact), "--prompt-ids", "1,96"), "96")


def test_verbose_shows_traceback(tmp_path):
    done = ember("compile", "--model", "llama9-70b", "--verbose", cwd=tmp_path)
    assert done.returncode != 0 and "Traceback" in done.stderr


@pytest.mark.skipif(__import__("shutil").which("nvcc") is None, reason="nvcc (CUDA 13 toolkit) not on PATH")
def test_cuda_compile_without_gpu_holds_kernels_for_each_arch(hf_dir, tmp_path):
    from ember.targets.cuda.library_check import inspect_cuda_library

    done = ember("compile", "--model", str(hf_dir), "--target", "cuda", "-o", str(tmp_path / "cuda"))
    assert done.returncode == 0, done.stderr
    manifest = json.loads((tmp_path / "cuda" / "manifest.json").read_text())
    assert manifest["target"]["kind"] == "cuda" and manifest["target"]["archs"] == ["sm_80", "sm_90"]
    assert manifest["compute_dtype"] == "float16" and "decode1" in manifest["functions"]
    from ember.targets.cuda import prefill_gemm

    report = inspect_cuda_library(tmp_path / "cuda" / "model.so")
    fatbins = 2 if prefill_gemm.enabled(["sm_80", "sm_90"]) else 1  # TVM's kernels, and the prefill GEMMs' object
    assert report.fatbins == fatbins and sorted(report.cubin_archs) == ["sm_80"] * fatbins + ["sm_90"] * fatbins
    assert report.global_sources == 0 and not report.has_ptx
    assert report.pdl_kernels == 0  # sm_80 has no programmatic dependent launch (targets/cuda/pdl.py)


# -- issue 8: --output never destroys what ember did not write; arguments fail before any heavy work ----------------
def test_output_refuses_a_users_folder_and_the_current_one(hf_dir, tmp_path):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("mine")
    for extra in ([], ["--force"]):
        one_line_error(ember("compile", "--model", str(hf_dir), "--output", "precious", *extra, cwd=tmp_path),
                       "--output precious: exists and is not an ember artifact", "notes.txt")
    assert [p.name for p in precious.iterdir()] == ["notes.txt"] and (precious / "notes.txt").read_text() == "mine"
    for path in (".", str(tmp_path), ".."):
        one_line_error(ember("compile", "--model", str(hf_dir), "--output", path, "--force", cwd=precious),
                       f"--output {path}: is the current folder or holds it")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["precious"]  # nothing renamed, nothing left behind
    assert (precious / "notes.txt").read_text() == "mine"


def test_force_replaces_an_artifact(artifact, hf_dir, tmp_path):
    import shutil

    out = tmp_path / "art"
    shutil.copytree(artifact, out)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["notes"] = ["the old build"]  # still an ember artifact; marks which build is there
    manifest["manifest_sha256"] = manifest_digest(manifest)
    (out / "manifest.json").write_text(json.dumps(manifest))
    one_line_error(ember("compile", "--model", str(hf_dir), "--output", str(out)),
                   f"--output {out}: holds an ember artifact already; pass --force to replace it")
    done = ember("compile", "--model", str(hf_dir), "--output", str(out), "--force")
    assert done.returncode == 0, done.stderr
    new = json.loads((out / "manifest.json").read_text())
    assert new["notes"] == [] and set(new["files"]) == set(manifest["files"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]  # no temporary or old folder left


def test_quant_and_target_are_refused_before_the_model_is_read(tmp_path):
    junk = tmp_path / "model.gguf"
    junk.write_bytes(b"not a gguf at all")  # opening it would fail with another error
    one_line_error(ember("compile", "--model", str(junk), "--quant", "q3f99", cwd=tmp_path),
                   "--quant 'q3f99': unknown scheme", "q4f16_1")
    one_line_error(ember("compile", "--model", str(junk), "--target", "tpu", cwd=tmp_path),
                   "--target 'tpu': unknown target")
    assert not (tmp_path / "compiled").exists()


def test_config_field_errors_name_the_file_and_field(hf_dir, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    config = json.loads((hf_dir / "config.json").read_text())
    config["hidden_size"] = "32"
    (bad / "config.json").write_text(json.dumps(config))
    one_line_error(ember("compile", "--model", str(bad), cwd=tmp_path),
                   f"{bad / 'config.json'}: field 'hidden_size' must be a positive integer, got '32'")


@pytest.mark.parametrize("args, fragment", [
    (["--max-tokens", "-1"], "--max-tokens must be an integer >= 1, got -1"),
    (["--temperature", "-2"], "--temperature must be a finite number >= 0, got -2.0"),
    (["--top-p", "5"], "--top-p must be in (0, 1], got 5.0"),
    (["--top-k", "-1"], "--top-k must be an integer >= 0"),
    (["--seed", "-1"], "--seed must be an integer >= 0"),
    (["--max-tokens", "100000"], "--max-tokens 100000 exceeds the context length"),
    (["--device", "tpu"], "--device 'tpu': unknown device"),
])
def test_run_and_chat_options_are_checked_before_loading(artifact, tmp_path, args, fragment):
    only_manifest = tmp_path / "manifest-only"  # loading it would fail: no library, no weights
    only_manifest.mkdir()
    (only_manifest / "manifest.json").write_text((artifact / "manifest.json").read_text())
    one_line_error(ember("run", str(only_manifest), "--prompt-ids", "1,2", *args), fragment)
    one_line_error(ember("chat", str(only_manifest), "-m", "hi", *args), fragment)


@pytest.mark.parametrize("args, fragment", [
    (["--perplexity", "x.txt"], "artifact tiny-hf has no tokenizer: `ember eval --perplexity` tokenizes the text"),
    (["--perplexity", "x.txt", "--context", "4096"], "--context 4096 is larger than the context length 2048"),
    (["--perplexity", "x.txt", "--scoring", "llama.cpp", "--stride", "4"], "--stride does not apply to --scoring"),
    (["--perplexity", "x.txt", "--max-tokens", "1"], "--max-tokens must be an integer >= 2, got 1"),
    (["--context", "64"], "give --perplexity FILE.txt"),
])
def test_eval_options_are_checked_before_loading(artifact, tmp_path, args, fragment):
    only_manifest = tmp_path / "manifest-only"  # loading it would fail: no library, no weights
    only_manifest.mkdir()
    (only_manifest / "manifest.json").write_text((artifact / "manifest.json").read_text())
    one_line_error(ember("eval", str(only_manifest), *args), fragment)


FAKE_LLAMA_BENCH = """#!{python}
import json, sys
open({argv!r}, "w").write(json.dumps(sys.argv[1:]))
row = {{"model_filename": "m.gguf", "model_type": "llama ?B F32", "n_threads": 2, "n_depth": 0}}
for n_prompt, n_gen, avg_ns in ((16, 0, 8_000_000), (128, 0, 64_000_000), (128, 4, 104_000_000)):
    print(json.dumps({{**row, "n_prompt": n_prompt, "n_gen": n_gen, "avg_ns": avg_ns}}))
"""


def test_bench_beside_llama_cpp(artifact, tmp_path):
    binary, gguf = tmp_path / "llama-bench", tmp_path / "m.gguf"
    binary.write_text(FAKE_LLAMA_BENCH.format(python=sys.executable, argv=str(tmp_path / "argv.json")))
    binary.chmod(0o755)
    gguf.write_bytes(b"GGUF")
    done = ember("bench", str(artifact), "--prefill", "16", "--steps", "4", "--repeats", "1", "--peer", "llama.cpp",
                 "--llama-bench", str(binary), "--gguf", str(gguf))  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    ours = [r for r in rows if r.get("engine") == "ember"]
    threads = ours[0]["threads"]
    assert threads >= 1 and all(r["threads"] == threads for r in ours)
    argv = json.loads((tmp_path / "argv.json").read_text())
    assert argv[argv.index("-t") + 1] == str(threads) and argv[argv.index("-pg") + 1] == "128,4"
    peer = {r["metric"]: r["value"] for r in rows if r.get("engine") == "llama.cpp"}
    assert peer == {"prefill_pp16_tok_s": 2000.0, "ttft_128_ms": 64.0, "decode_b1_tok_s": 100.0}
    assert {r["ratio"]["metric"] for r in rows if "ratio" in r} == set(peer)
    # the artifact was compiled from a Hugging Face folder: without --gguf there is nothing to give llama-bench
    done = ember("bench", str(artifact), "--peer", "llama.cpp", "--llama-bench", str(binary))
    one_line_error(done, "--peer llama.cpp needs --gguf PATH")


def test_bench_context_plot_and_plot_from_saved_rows(artifact, tmp_path):
    png, saved = tmp_path / "run.png", tmp_path / "rows.jsonl"
    done = ember("bench", str(artifact), "--prefill", "16", "--batch", "1,2", "--steps", "4", "--repeats", "1",
                 "--context", "64,300", "--output", str(saved), "--plot", str(png))  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    ctx = {r["metric"]: r for r in rows if r["metric"].startswith("decode_ctx")}
    assert list(ctx) == ["decode_ctx64_b1_tok_s", "decode_ctx300_b1_tok_s"]
    assert [r["context"] for r in ctx.values()] == [64, 300] and all(r["value"] > 0 for r in ctx.values())
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "plot: " in done.stderr and "ember q0f32 (2)" in done.stderr
    again = tmp_path / "again.png"
    done = ember("bench", "--plot", str(again), "--from", str(saved))
    assert done.returncode == 0, done.stderr
    assert again.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "ember q0f32 (2)" in done.stderr
    # the tiny model's context is 2048 tokens: a 2048-token prompt and 4 steps after it do not fit
    done = ember("bench", str(artifact), "--context", "2048", "--steps", "4")
    one_line_error(done, "need 2060 tokens per sequence", "context length 2048")
    one_line_error(ember("bench", str(artifact), "--from", str(saved)), "--from draws saved rows")
    one_line_error(ember("bench", str(artifact), "--context", "2k"), "--context takes whole numbers")


def test_bench_plot_without_matplotlib_names_the_extra(artifact, tmp_path):
    shadow = tmp_path / "shadow" / "matplotlib"  # an import of matplotlib fails as when it is not installed
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('No module named matplotlib')\n")
    env = {"PYTHONPATH": os.pathsep.join([str(shadow.parent), os.environ.get("PYTHONPATH", "")])}
    done = ember("bench", str(artifact), "--plot", str(tmp_path / "x.png"), env=env)
    one_line_error(done, "--plot needs matplotlib", "ember[plot]")
    assert not (tmp_path / "x.png").exists() and done.stdout == ""  # refused before timing anything
