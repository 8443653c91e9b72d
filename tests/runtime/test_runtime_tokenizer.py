"""Tokenizer wrapper: BOS handling, chat templates as Hugging Face renders them, streaming detokenization."""
from __future__ import annotations

import pytest

from ember.errors import InputError
from ember.runtime.artifact import read_manifest
from ember.runtime.tokenizer import Tokenizer
from nn_fixture import BOS, EOS


@pytest.fixture(scope="module")
def tok(tiny) -> Tokenizer:
    info = read_manifest(tiny.path).tokenizer
    return Tokenizer(tiny.path / info.file, info)


@pytest.fixture(scope="module")
def hf_tok(tiny, tok):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_file=str(tiny.tokenizer_file), bos_token=BOS, eos_token=EOS, chat_template=tok.info.chat_template
    )


def test_encode_adds_bos_once(tok):
    ids = tok.encode("hello world")
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    assert tok.encode(BOS + "hello world") == ids  # already there: not doubled
    assert tok.encode("hello world", add_bos=False) == ids[1:]
    assert tok.decode(ids) == "hello world"


MESSAGES = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "  hello café  "},
    {"role": "assistant", "content": "hi"},
    {"role": "user", "content": "rocket 🚀?"},
]


@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_chat_template_renders_like_transformers(tok, hf_tok, add_generation_prompt):
    got = tok.apply_chat_template(MESSAGES, add_generation_prompt=add_generation_prompt)
    want = hf_tok.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=add_generation_prompt)
    assert got == want
    assert got.startswith(BOS) and got.endswith("<|assistant|>") == add_generation_prompt
    ids = hf_tok.apply_chat_template(
        MESSAGES, tokenize=True, return_dict=False, add_generation_prompt=add_generation_prompt
    )
    assert tok.encode(got, add_bos=False) == list(ids)


def test_chat_template_errors_are_one_line(tok):
    with pytest.raises(InputError, match="^chat template error: bad role tool$"):
        tok.apply_chat_template([{"role": "tool", "content": "x"}])
    with pytest.raises(InputError, match="message 0 must be a dict with 'role' and 'content'"):
        tok.apply_chat_template([{"content": "x"}])


def test_generation_tag_and_tojson_render():
    from ember.runtime.tokenizer import compile_chat_template

    tpl = compile_chat_template(
        "{% for m in messages %}{% generation %}{{ m | tojson }}{% endgeneration %}{% endfor %}"
    )
    assert tpl.render(messages=[{"role": "user", "content": "é<b>"}]) == '{"role": "user", "content": "é<b>"}'


def test_streaming_never_splits_a_character(tok):
    text = "café ☃ heart ❤ rocket 🚀 smile 😀 déjà vu"
    ids = tok.encode(text, add_bos=False)
    assert len(ids) > len(text.split())  # multi-byte characters span several byte-level tokens
    dec = tok.stream_decoder()
    pieces = [dec.push(t) for t in ids]
    tail = dec.flush()
    assert "".join(pieces) + tail == text
    assert all("\ufffd" not in p for p in pieces)
    assert "" in pieces  # at least one token was held back until its character was complete
    # the emoji shows up whole, in one piece
    assert any("🚀" in p for p in pieces)
