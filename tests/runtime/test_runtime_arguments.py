"""The Python API refuses bad arguments with an InputError naming the argument (`max_tokens`, not `--max-tokens`),
before any work: no bare TypeError, no silent generation from an empty chat, no model load for a bad context."""
from __future__ import annotations

import pytest

from ember.errors import InputError
from ember.runtime import engine as engine_module
from ember.runtime.engine import Engine
from ember.runtime.sampler import SamplingParams


@pytest.mark.parametrize("prompt, message", [
    (None, "prompt must be a string or a list of token ids, got NoneType"),
    (42, "prompt must be a string or a list of token ids, got int"),
    (b"hi", "prompt must be a string or a list of token ids, got bytes"),
    ([1, "x"], "prompt token ids must be a flat list of integers"),
])
def test_bad_prompts(engine, prompt, message):
    with pytest.raises(InputError, match=f"^{message}"):
        engine.generate(prompt, max_tokens=2)


@pytest.mark.parametrize("kwargs, name", [
    ({"max_tokens": -1}, "max_tokens"), ({"max_tokens": 2.0}, "max_tokens"), ({"temperature": -2}, "temperature"),
    ({"top_p": 5}, "top_p"), ({"top_k": -1}, "top_k"), ({"seed": -1}, "seed"), ({"stream": "print"}, "stream"),
])
def test_bad_generation_arguments_use_python_names(engine, kwargs, name):
    with pytest.raises(InputError, match=f"^{name} must") as caught:
        engine.generate([1, 2], **{"max_tokens": 2, **kwargs})
    option = "--" + name.replace("_", "-")
    assert caught.value.cli_message.startswith(f"{option} must")  # what `ember run` prints for the same mistake


def test_sampling_params_name_their_fields():
    with pytest.raises(InputError, match=r"^top_p must be in \(0, 1\], got True"):
        SamplingParams(top_p=True)


@pytest.mark.parametrize("messages, message", [
    ([], "messages is empty"),
    ("hello", "messages must be a list of {'role': ..., 'content': ...} dicts, got str"),
    (None, "messages must be a list"),
    ([{"role": "user"}], r"messages\[0\] must be a dict with a string 'role' and a string 'content'"),
    ([{"role": "user", "content": "hi"}, {"content": "x"}], r"messages\[1\] must be a dict"),
    ([{"role": "user", "content": None}], r"messages\[0\] must be a dict"),
])
def test_bad_chats(engine, messages, message):
    with pytest.raises(InputError, match=f"^{message}"):
        engine.chat(messages, max_tokens=2)


@pytest.mark.parametrize("kwargs, message", [
    ({"context_length": 0}, r"^context_length 0 must be in \[1, 64\] for tiny-llama$"),
    ({"context_length": 65}, r"^context_length 65 must be in \[1, 64\]"),
    ({"context_length": "64"}, r"^context_length '64' must be in"),
    ({"max_batch_size": 0}, "^max_batch_size must be an integer >= 1, got 0"),
    ({"prefill_chunk_size": -4}, "^prefill_chunk_size must be an integer >= 1"),
    ({"device": "tpu"}, r"^device 'tpu': unknown device \(use cpu, cuda or cuda:N\)"),
])
def test_load_arguments_are_checked_before_loading(tiny, monkeypatch, kwargs, message):
    def no_load(*args, **kw):
        raise AssertionError("the artifact was loaded")

    monkeypatch.setattr(engine_module, "load_artifact", no_load)
    with pytest.raises(InputError, match=message):
        Engine.load(tiny.path, **kwargs)
