"""`ember serve`'s HTTP API on the tiny cpu artifact, through the real `openai` client and raw HTTP."""
from __future__ import annotations

import asyncio
import json
import re

import httpx
import pytest

openai = pytest.importorskip("openai")

from ember.runtime.serving.background import running_server  # noqa: E402


@pytest.fixture(scope="module")
def server(tiny):
    with running_server(tiny.path, max_seqs=8, max_queue=64) as (url, engine):
        yield url, engine


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key="unused", max_retries=0, timeout=60)


def test_models_and_health(server, client):
    models = client.models.list()
    assert [m.id for m in models.data] == ["tiny-llama"]
    health = httpx.get(server[0] + "/health").json()
    assert health["status"] == "ok" and health["kv_pages_used"] == 0


def test_completion_greedy_equals_the_engine_alone(server, client, tiny):
    from ember.runtime.engine import Engine

    want = Engine.load(tiny.path).generate("hello ember", max_tokens=12)
    got = client.completions.create(model="tiny-llama", prompt="hello ember", max_tokens=12, temperature=0)
    assert got.choices[0].text == want.text
    assert got.choices[0].finish_reason == want.finish_reason
    assert got.usage.prompt_tokens == want.prompt_tokens and got.usage.completion_tokens == len(want.token_ids)
    ids = client.completions.create(model="tiny-llama", prompt=want_ids(tiny), max_tokens=5, temperature=0)
    assert ids.usage.prompt_tokens == 4


def want_ids(tiny) -> list[int]:
    return [0, 5, 6, 7]


def test_chat_uses_the_template_and_streams_the_same_text(client):
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]
    whole = client.chat.completions.create(model="tiny-llama", messages=messages, max_tokens=10, temperature=0)
    assert whole.choices[0].message.role == "assistant"
    chunks = list(client.chat.completions.create(model="tiny-llama", messages=messages, max_tokens=10,
                                                 temperature=0, stream=True,
                                                 stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason


def test_the_usage_chunk_comes_only_when_asked_for(server):
    """As OpenAI: without stream_options.include_usage every chunk has a choice (so `chunk.choices[0]` works) and
    none has `usage`; with it every chunk has `usage` null and one last chunk, with no choices, has the counts."""
    body = {"prompt": "hello", "max_tokens": 6, "temperature": 0, "stream": True, "ignore_eos": True}
    plain = sse_chunks(server[0], body)
    assert plain and all(c["choices"] and "usage" not in c for c in plain)
    counted = sse_chunks(server[0], {**body, "stream_options": {"include_usage": True}})
    assert all(c["choices"] and c["usage"] is None for c in counted[:-1])
    assert counted[-1]["choices"] == [] and counted[-1]["usage"]["completion_tokens"] == 6
    assert "".join(c["choices"][0]["text"] for c in plain) == "".join(c["choices"][0]["text"] for c in counted[:-1])


def sse_chunks(url: str, body: dict) -> list[dict]:
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=30) as r:
        lines = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    return [json.loads(line[6:]) for line in lines[:-1]]


def test_stop_strings(client):
    free = client.completions.create(model="tiny-llama", prompt="the quick", max_tokens=20, temperature=0)
    text = free.choices[0].text
    stop = text[6:9]
    cut = client.completions.create(model="tiny-llama", prompt="the quick", max_tokens=20, temperature=0,
                                    stop=[stop, "zzzz"])
    assert cut.choices[0].text == text[: text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    streamed = client.completions.create(model="tiny-llama", prompt="the quick", max_tokens=20, temperature=0,
                                         stop=stop, stream=True)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == cut.choices[0].text


def test_seed_reproducible_and_n_choices(client):
    options = dict(model="tiny-llama", prompt="hello", max_tokens=16, temperature=1.0, top_p=0.95,
                   extra_body={"top_k": 50, "min_p": 0.01, "repetition_penalty": 1.1})
    a = client.completions.create(seed=7, **options)
    b = client.completions.create(seed=7, **options)
    assert a.choices[0].text == b.choices[0].text
    many = client.completions.create(seed=7, n=3, **options)
    assert len(many.choices) == 3 and [c.index for c in many.choices] == [0, 1, 2]
    assert many.choices[0].text == a.choices[0].text
    assert len({c.text for c in many.choices}) > 1
    assert 3 <= many.usage.completion_tokens <= 3 * 16 and many.usage.prompt_tokens == a.usage.prompt_tokens
    streamed = client.completions.create(seed=7, n=3, stream=True, **options)
    texts = ["", "", ""]
    for chunk in streamed:
        for c in chunk.choices:
            texts[c.index] += c.text
    assert texts == [c.text for c in many.choices]


SAMPLING = {  # each beside the request it differs from by that one parameter
    "seed": ({"temperature": 1.0, "seed": 6}, "t1"), "top_k": ({"temperature": 1.0, "seed": 5, "top_k": 3}, "t1"),
    "top_k=1 is greedy": ({"temperature": 1.0, "seed": 5, "top_k": 1}, None),
    "top_p": ({"temperature": 1.0, "seed": 5, "top_p": 0.3}, "t1"),
    "min_p": ({"temperature": 1.0, "seed": 5, "min_p": 0.3}, "t1"),
    "temperature": ({"temperature": 0.3, "seed": 5}, "t1"),
    "presence_penalty": ({"presence_penalty": 1.5}, "greedy"),
    "frequency_penalty": ({"frequency_penalty": 1.5}, "greedy"),
    "repetition_penalty": ({"repetition_penalty": 1.5}, "greedy"),
}


def test_every_sampling_parameter_is_honored(client, alone):
    """Each parameter through the server gives what `Engine.generate` (ember run's sampler) gives with it, and
    changes the output of the request without it (top_k 1: the greedy output at temperature 1)."""
    def served(params):
        top = {k: params[k] for k in ("temperature", "top_p", "seed", "presence_penalty", "frequency_penalty")
               if k in params}
        extra = {k: params[k] for k in ("top_k", "min_p", "repetition_penalty") if k in params}
        return client.completions.create(model="tiny-llama", prompt="hello ember", max_tokens=16,
                                         extra_body=extra, **{"temperature": 0, **top}).choices[0].text

    base = {"greedy": served({}), "t1": served({"temperature": 1.0, "seed": 5})}
    assert base["greedy"] == alone.generate("hello ember", max_tokens=16).text
    for name, (params, differs_from) in SAMPLING.items():
        got = served(params)
        assert got == alone.generate("hello ember", max_tokens=16, **params).text, name
        assert got != base[differs_from] if differs_from else got == base["greedy"], name


@pytest.fixture(scope="module")
def alone(tiny):
    from ember.runtime.engine import Engine

    return Engine.load(tiny.path)


def test_errors_are_openai_style_and_the_server_keeps_serving(server, client):
    url = server[0]
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="hi", max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.completions.create(model="tiny-llama", prompt="hi", max_tokens=-3)
    with pytest.raises(openai.BadRequestError, match=r"\d+ tokens.*context length of tiny-llama is 64"):
        client.completions.create(model="tiny-llama", prompt=list(range(3, 90)), max_tokens=2)
    cases = [
        (b"{not json", 400),
        (json.dumps({"model": "tiny-llama", "prompt": "hi", "max_tokens": "ten"}).encode(), 400),
        (json.dumps({"model": "tiny-llama", "prompt": 5}).encode(), 400),
        (json.dumps({"model": "tiny-llama", "prompt": "hi", "temperature": -1}).encode(), 400),
        (json.dumps({"model": "tiny-llama", "prompt": "hi", "n": 0}).encode(), 400),
        (json.dumps({"model": "tiny-llama", "prompt": [1, 2, 100000]}).encode(), 400),
        (json.dumps([1, 2]).encode(), 400),
        (json.dumps({"model": "tiny-llama", "prompt": "hi", "temperature": "hot"}).encode(), 400),
        (json.dumps({"model": "tiny-llama", "prompt": "hi", "stop": 5}).encode(), 400),
        (json.dumps({"model": "tiny-llama", "prompt": "hi", "stream": "yes"}).encode(), 400),
        (json.dumps({"model": "tiny-llama", "prompt": "hi", "max_tokens": 2.5}).encode(), 400),
        (json.dumps({"model": "tiny-llama", "prompt": "hi", "max_tokens": 0}).encode(), 400),
        (b'{"prompt": "' + b"a" * (10 << 20) + b'"}', 413),
    ]
    for body, status in cases:
        r = httpx.post(url + "/v1/completions", content=body, headers={"content-type": "application/json"},
                       timeout=30)
        assert r.status_code == status, (body[:60], r.text)
        assert r.json()["error"]["message"]
    # 10 MB sent in chunks, without a Content-Length: refused once 4 MiB have come
    r = httpx.post(url + "/v1/completions", content=(b"a" * (1 << 20) for _ in range(10)),
                   headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 413 and "4194304 bytes" in r.json()["error"]["message"]
    r = httpx.post(url + "/v1/chat/completions", json={"model": "tiny-llama", "messages": "hi"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    for content in (5, [{"type": "image_url"}]):
        r = httpx.post(url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": content}]})
        assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    r = httpx.post(url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi " * 80}]})
    assert r.status_code == 400 and re.search(r"prompt has \d+ tokens, but the context length of tiny-llama is 64",
                                              r.json()["error"]["message"])
    assert httpx.get(url + "/v1/nowhere").status_code == 404
    ok = client.completions.create(model="tiny-llama", prompt="hi", max_tokens=3, temperature=0)
    assert ok.usage.completion_tokens >= 1


def test_a_full_queue_gets_429_with_retry_after_and_the_server_recovers(tiny):
    """One slot and a queue of one (decode slowed to 20 ms a step): a third request is refused with 429, OpenAI's
    rate_limit_error and Retry-After; the two accepted ones finish whole, and then requests are taken again."""
    import time

    with running_server(tiny.path, max_seqs=1, max_queue=1, prefix_cache=False) as (url, engine):
        decode = engine.runner.decode

        def slow_decode(*args, **kwargs):
            time.sleep(0.02)
            return decode(*args, **kwargs)

        engine.runner.decode = slow_decode
        body = {"prompt": "hello", "max_tokens": 30, "temperature": 0, "ignore_eos": True}

        async def main():
            async with httpx.AsyncClient(timeout=60) as http:
                accepted = []
                for running, waiting in ((1, 0), (1, 1)):  # one running, then one waiting for its slot
                    accepted.append(asyncio.create_task(http.post(url + "/v1/completions", json=body)))
                    deadline = time.time() + 30
                    while (engine.stats()["running"], engine.stats()["waiting"]) != (running, waiting):
                        assert time.time() < deadline and not accepted[-1].done()
                        await asyncio.sleep(0.002)
                refused = await http.post(url + "/v1/completions", json=body)
                return refused, [r.json() for r in await asyncio.gather(*accepted)]

        refused, done = asyncio.run(main())
        assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["type"] == "rate_limit_error"
        assert [d["usage"]["completion_tokens"] for d in done] == [30, 30]
        again = httpx.post(url + "/v1/completions", json=body, timeout=60)
        assert again.status_code == 200 and engine.stats()["kv_pages_used"] == 0


def test_api_key_is_required_when_set(tiny):
    with running_server(tiny.path, api_key="sekrit", max_seqs=2) as (url, _):
        bad = openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()
        assert httpx.post(url + "/v1/completions", json={"prompt": "hi"}).status_code == 401
        good = openai.OpenAI(base_url=url + "/v1", api_key="sekrit", max_retries=0)
        assert good.completions.create(model="tiny-llama", prompt="hi", max_tokens=2).usage.completion_tokens


def test_disconnect_mid_stream_frees_the_sequence(server):
    url, engine = server
    with httpx.stream("POST", url + "/v1/completions", json={"prompt": "hello", "max_tokens": 60, "stream": True,
                                                              "temperature": 0}, timeout=30) as r:
        for line in r.iter_lines():
            if line.startswith("data:"):
                break
    for _ in range(300):
        if engine.stats()["running"] == 0 and engine.stats()["kv_pages_used"] == 0:
            break
        asyncio.run(asyncio.sleep(0.01))
    assert engine.stats()["running"] == 0 and engine.stats()["kv_pages_used"] == 0


def scrape(url: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(url + "/metrics").text
    return {sample.name: sample.value for family in text_string_to_metric_families(text)
            for sample in family.samples if not sample.labels or set(sample.labels) == {"le"} and
            sample.labels["le"] == "+Inf"}


def test_metrics_follow_the_engine_while_streams_run(tiny):
    """One slot, two streams (decode slowed to 20 ms a step): mid-stream /metrics shows one running, one queued,
    pages in use, tokens counted and a tokens/s rate; afterwards the queue and pages are at 0 and each request
    is in the TTFT and TPOT histograms."""
    import time

    with running_server(tiny.path, max_seqs=1, prefix_cache=False) as (url, engine):
        decode = engine.runner.decode

        def slow_decode(*args, **kwargs):
            time.sleep(0.02)
            return decode(*args, **kwargs)

        engine.runner.decode = slow_decode
        idle = scrape(url)
        assert idle["ember_generation_tokens_per_second"] == 0 and idle["ember_kv_pages_total"] == 4
        body = {"prompt": "hello", "max_tokens": 40, "temperature": 0, "ignore_eos": True, "stream": True}

        async def two():
            async with httpx.AsyncClient(timeout=60) as http:
                async def one():
                    async with http.stream("POST", url + "/v1/completions", json=body) as r:
                        return [line async for line in r.aiter_lines() if line.startswith("data: {")]

                tasks = [asyncio.create_task(one()) for _ in range(2)]
                deadline = time.time() + 30  # the first has made 10 tokens and the second waits for its slot
                while engine.stats()["generated_tokens"] < 10 or engine.stats()["waiting"] < 1:
                    assert time.time() < deadline
                    await asyncio.sleep(0.005)
                mid = await asyncio.to_thread(scrape, url)
                return mid, await asyncio.gather(*tasks)

        mid, streams = asyncio.run(two())
        after = scrape(url)
    assert mid["ember_running_sequences"] == 1 and mid["ember_queue_depth"] == 1
    assert mid["ember_kv_pages_used"] >= 1
    assert mid["ember_generation_tokens_total"] >= 10 and mid["ember_generation_tokens_per_second"] > 0
    assert all(json.loads(chunks[-1][6:])["choices"][0]["finish_reason"] == "length" for chunks in streams)
    assert after["ember_generation_tokens_total"] == 80
    assert after["ember_queue_depth"] == after["ember_running_sequences"] == after["ember_kv_pages_used"] == 0
    assert after["ember_time_to_first_token_seconds_count"] == 2
    assert after["ember_time_per_output_token_seconds_count"] == 2
    assert after["ember_time_to_first_token_seconds_bucket"] == 2  # the +Inf bucket
    assert after["ember_prompt_tokens_total"] == 2 * len(engine.engine.encode("hello"))


def test_load_256_streams_against_a_cache_that_holds_few(tiny, alone):
    """256 concurrent streams, 16 sequences at a time, a KV cache of 16 pages (4 full contexts), a queue of 160:
    every request either streams its whole greedy answer (the text and token count of the request run alone) or
    gets a 429/503 with Retry-After before any token; none is lost, and the pages come back. Prints p50/p99 time
    to first token and the total tokens/s."""
    import time

    def prompt(i):
        return [0, 3 + i % 300, 4 + i % 290]

    async def one(client, i):
        start = time.perf_counter()
        try:
            stream = await client.completions.create(model="tiny-llama", prompt=prompt(i), max_tokens=30,
                                                     temperature=0, stream=True, stream_options={"include_usage": True})
        except (openai.RateLimitError, openai.InternalServerError) as err:
            assert err.status_code in (429, 503) and err.response.headers["retry-after"] == "1"
            return err.status_code
        tokens, finish, first, text = None, None, None, ""
        async for chunk in stream:
            for c in chunk.choices:
                finish = c.finish_reason or finish
                text += c.text
                if first is None and c.text:
                    first = time.perf_counter() - start
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
        return i, tokens, finish, first, text

    async def main(url):
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=300)
        start = time.perf_counter()
        results = await asyncio.gather(*(one(client, i) for i in range(256)))
        return results, time.perf_counter() - start

    with running_server(tiny.path, max_seqs=16, max_queue=160, kv_tokens=256) as (url, engine):
        results, wall = asyncio.run(main(url))
        stats = engine.stats()
    done = [r for r in results if isinstance(r, tuple)]
    refused = [r for r in results if not isinstance(r, tuple)]
    ttft = sorted(r[3] for r in done if r[3] is not None)
    tokens = sum(r[1] for r in done)
    print(f"load: {len(done)} of 256 completed, {refused.count(429)} got 429 and {refused.count(503)} 503; TTFT "
          f"p50 {ttft[len(ttft) // 2]:.3f} s p99 {ttft[int(len(ttft) * 0.99)]:.3f} s; {tokens} tokens in {wall:.1f} s "
          f"= {tokens / wall:.0f} tok/s; {stats['preempted']} preemptions")
    assert len(done) + len(refused) == 256 and len(done) >= 160
    for i, tokens, finish, _, text in done:  # whole: what the request gives alone, to the last token
        want = alone.generate(prompt(i), max_tokens=30)
        assert (text, tokens, finish) == (want.text, len(want.token_ids), want.finish_reason), i
    assert stats["kv_pages_used"] == 0 and stats["running"] == 0 and stats["waiting"] == 0
    assert stats["preempted"] > 0  # the cache was too small for the batch: sequences were recomputed


def test_ember_serve_binds_loopback_and_exits_0_on_sigterm(tiny):
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "ember.cli", "serve", str(tiny.path), "--port", str(port),
                             "--max-num-seqs", "2", "--max-model-len", "48", "--gpu-memory-utilization", "0.5"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            raise AssertionError(f"ember serve did not come up: {proc.stderr.read() if proc.poll() is not None else ''}")
        got = httpx.post(url + "/v1/completions", json={"prompt": "hello", "max_tokens": 3}, timeout=30).json()
        assert got["usage"]["completion_tokens"] >= 1
        if os.path.exists("/proc/net/tcp"):  # listening (state 0A) on 127.0.0.1 only
            with open("/proc/net/tcp") as f:
                rows = [line.split() for line in f.readlines()[1:]]
            listening = [r[1] for r in rows if r[3] == "0A" and int(r[1].split(":")[1], 16) == port]
            assert listening == [f"0100007F:{port:04X}"]
        # the flags: 2 slots, contexts of 48 tokens, and --gpu-memory-utilization (on cpu: of the host's free
        # memory, capped at full contexts for the 2 running and 2 cached slots) sizes the cache to 4 x 3 pages
        health = httpx.get(url + "/health").json()
        assert (health["max_num_seqs"], health["max_model_len"], health["kv_pages_total"]) == (2, 48, 12)
        long = httpx.post(url + "/v1/completions", json={"prompt": list(range(3, 51)), "max_tokens": 1})
        assert long.status_code == 400 and "48 tokens, but the context length of tiny-llama is 48" in long.text
        # SIGTERM mid-stream: the stream still ends properly, new connections are refused, the exit status is 0
        with httpx.stream("POST", url + "/v1/completions", json={
                "prompt": "hello", "max_tokens": 40, "temperature": 0, "stream": True,
                "stream_options": {"include_usage": True}}, timeout=30) as r:
            lines = r.iter_lines()
            assert next(line for line in lines if line.startswith("data:"))
            proc.send_signal(signal.SIGTERM)
            rest = [line for line in lines if line.startswith("data:")]
        assert rest[-1] == "data: [DONE]" and '"usage"' in rest[-2]
        with pytest.raises(httpx.HTTPError):
            for _ in range(100):  # the listening socket closes once the signal is handled
                httpx.get(url + "/health", timeout=1)
                time.sleep(0.05)
        assert proc.wait(timeout=90) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    _, err = proc.communicate()
    assert f"http://127.0.0.1:{port}/v1" in err


def test_logprobs_in_both_formats_match_the_greedy_choice(client):
    got = client.completions.create(model="tiny-llama", prompt="hello", max_tokens=6, temperature=0, logprobs=3)
    lp = got.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == got.usage.completion_tokens
    assert "".join(lp.tokens) == got.choices[0].text
    for token, value, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert value <= 0 and 1 <= len(top) <= 3  # tokens that decode to the same text share a key
        assert max(top.values()) == pytest.approx(value)  # greedy: the chosen token is the most likely
    chat = client.chat.completions.create(model="tiny-llama", messages=[{"role": "user", "content": "hi"}],
                                          max_tokens=5, temperature=0, logprobs=True, top_logprobs=2)
    content = chat.choices[0].logprobs.content
    assert len(content) == chat.usage.completion_tokens and all(len(c.top_logprobs) == 2 for c in content)
    assert all(c.logprob == pytest.approx(c.top_logprobs[0].logprob) for c in content)
    streamed = client.chat.completions.create(model="tiny-llama", messages=[{"role": "user", "content": "hi"}],
                                              max_tokens=5, temperature=0, logprobs=True, top_logprobs=2, stream=True)
    entries = [e for c in streamed if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert [e.token for e in entries] == [c.token for c in content]


def test_logit_bias_forces_a_token_and_unknown_fields_are_ignored(server, client):
    forced = client.completions.create(model="tiny-llama", prompt="hello", max_tokens=5, temperature=0,
                                       logit_bias={"100": 100}, extra_body={"some_future_field": {"x": 1}})
    assert forced.usage.completion_tokens == 5
    eos = str(server[1].engine.eos_token_ids[0])
    stopped = client.completions.create(model="tiny-llama", prompt="hello", max_tokens=5, temperature=0,
                                        logit_bias={eos: 100})
    assert stopped.usage.completion_tokens == 0 and stopped.choices[0].finish_reason == "stop"
    ignored = client.completions.create(model="tiny-llama", prompt="hello", max_tokens=5, temperature=0,
                                        logit_bias={eos: 100}, extra_body={"ignore_eos": True})
    assert ignored.usage.completion_tokens == 5 and ignored.choices[0].finish_reason == "length"
    r = httpx.post(server[0] + "/v1/completions", json={"prompt": [0, 5, 6], "max_tokens": 4, "temperature": 0,
                                                        "logit_bias": {"100": 100}, "logprobs": 0}).json()
    assert r["choices"][0]["logprobs"]["top_logprobs"] == [{}] * 4
    bad = [({"logit_bias": {"abc": 1}}, "logit_bias"), ({"logit_bias": {"5": 300}}, "logit_bias"),
           ({"logit_bias": [1]}, "logit_bias"), ({"logprobs": 50}, "logprobs"), ({"user": 5}, "user"),
           ({"response_format": "json"}, "response_format"), ({"stream_options": {"include_usage": "y"}}, None),
           ({"response_format": {"type": "yaml"}}, None)]
    for extra, param in bad:
        r = httpx.post(server[0] + "/v1/completions", json={"prompt": "hi", "max_tokens": 2, **extra})
        assert r.status_code == 400, (extra, r.text)
        if param:
            assert param in r.json()["error"]["message"]


def test_json_schema_output_parses_and_validates(client):
    jsonschema = pytest.importorskip("jsonschema")
    pytest.importorskip("llguidance")
    schema = {"type": "object", "properties": {"answer": {"enum": ["yes", "no"]}, "sure": {"type": "boolean"}},
              "required": ["answer", "sure"], "additionalProperties": False}
    for seed in range(4):
        got = client.chat.completions.create(
            model="tiny-llama", messages=[{"role": "user", "content": "yes?"}], max_tokens=40, temperature=1.0,
            seed=seed, response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema}})
        assert got.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(got.choices[0].message.content), schema)
    obj = client.completions.create(model="tiny-llama", prompt="{", max_tokens=40, temperature=0,
                                    extra_body={"response_format": {"type": "json_object"}})
    if obj.choices[0].finish_reason == "stop":  # a random model may write a long object: only a whole one parses
        assert isinstance(json.loads(obj.choices[0].text), dict)
    else:
        assert obj.choices[0].text.startswith("{")


def test_n_choices_fork_the_first_ones_prompt(server, client):
    url, engine = server
    before = engine.stats()["prefix_cache_hits"]
    many = client.completions.create(model="tiny-llama", prompt=[0] + list(range(40, 70)), max_tokens=8,
                                     temperature=1.0, seed=3, n=4)
    assert len({c.text for c in many.choices}) > 1
    assert engine.stats()["prefix_cache_hits"] - before >= 3
    alone = [client.completions.create(model="tiny-llama", prompt=[0] + list(range(40, 70)), max_tokens=8,
                                       temperature=1.0, seed=3 + i).choices[0].text for i in range(4)]
    assert [c.text for c in many.choices] == alone


def test_a_client_gone_mid_request_frees_its_sequence_within_a_step(tiny):
    """Streaming or not: once the client closes the connection, the sequence leaves the engine by the next step
    (each decode step is slowed to 50 ms here so the request is surely still generating)."""
    import time

    with running_server(tiny.path, max_seqs=2, prefix_cache=False) as (url, engine):
        decode = engine.runner.decode

        def slow_decode(*args, **kwargs):
            time.sleep(0.05)
            return decode(*args, **kwargs)

        engine.runner.decode = slow_decode
        body = {"prompt": "hello", "max_tokens": 50, "temperature": 0}
        for stream in (True, False):
            generated = engine.stats()["generated_tokens"]
            try:
                with httpx.stream("POST", url + "/v1/completions", json={**body, "stream": stream},
                                  timeout=0.5) as r:
                    for line in r.iter_lines():
                        if line.startswith("data:"):
                            break
            except httpx.ReadTimeout:
                assert not stream
            steps = engine.core.stats.steps  # the connection is closed now
            deadline = time.time() + 5
            while time.time() < deadline and engine.stats()["running"]:
                time.sleep(0.005)
            assert engine.stats()["running"] == 0 and engine.stats()["kv_pages_used"] == 0
            assert engine.core.stats.steps - steps <= 2
            assert engine.stats()["generated_tokens"] - generated < 30


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"enum": ["Paris", "Rome"]},
                                                    "celsius": {"type": "boolean"}},
                   "required": ["city", "celsius"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {
    "type": "object", "properties": {"zone": {"enum": ["utc", "cet"]}}, "required": ["zone"],
    "additionalProperties": False}}}


def test_tool_calls_parse_from_replies_and_the_call_schema_constrains_them():
    from ember.runtime.serving.tools import call_schema, parse_tool_calls, template_messages

    tools = [WEATHER, TIME]
    bare = parse_tool_calls('{"name": "get_time", "arguments": {"zone": "utc"}}', tools)
    assert bare[0]["function"] == {"name": "get_time", "arguments": '{"zone": "utc"}'}
    tagged = parse_tool_calls('<tool_call>{"name": "get_weather", "parameters": {"city": "Rome"}}</tool_call>\n'
                              '<tool_call>{"name": "get_time", "arguments": {}}</tool_call>', tools)
    assert [c["function"]["name"] for c in tagged] == ["get_weather", "get_time"]
    assert parse_tool_calls("it is sunny", tools) is None
    assert parse_tool_calls('{"name": "unknown", "arguments": {}}', tools) is None
    assert call_schema(tools, "get_time")["properties"]["name"] == {"const": "get_time"}
    assert len(call_schema(tools, None)["anyOf"]) == 2
    history = template_messages([{"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "get_time", "arguments": '{"zone": "cet"}'}}]}])
    assert history[0]["content"] == "" and history[0]["tool_calls"][0]["arguments"] == {"zone": "cet"}


def test_tool_arguments_are_checked(client):
    for tools, choice in (([{"type": "function"}], "auto"), ([WEATHER], "sometimes"),
                          ([WEATHER], {"type": "function", "function": {"name": "nope"}})):
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model="tiny-llama", messages=[{"role": "user", "content": "x"}],
                                           tools=tools, tool_choice=choice, max_tokens=3)
    text = client.chat.completions.create(model="tiny-llama", messages=[{"role": "user", "content": "x"}],
                                          tools=[WEATHER], tool_choice="none", max_tokens=3, temperature=0)
    assert text.choices[0].message.tool_calls is None


def test_an_artifact_without_a_tokenizer_streams_a_chunk_per_token(tiny):
    from starlette.testclient import TestClient

    from ember.runtime.serving.async_engine import AsyncEngine
    from ember.runtime.serving.server import create_app

    with AsyncEngine.load(tiny.path, max_seqs=2) as engine:
        engine.engine.tokenizer = engine.core.tokenizer = None  # as a random-weight benchmark build
        with TestClient(create_app(engine)) as http:
            with http.stream("POST", "/v1/completions", json={"prompt": [0, 5, 6], "max_tokens": 6,
                                                               "temperature": 0, "ignore_eos": True,
                                                               "stream": True,
                                                               "stream_options": {"include_usage": True}}) as r:
                chunks = [json.loads(line[6:]) for line in r.iter_lines()
                          if line.startswith("data: {")]
    assert len([c for c in chunks if c["choices"]]) == 6 and chunks[-1]["usage"]["completion_tokens"] == 6
