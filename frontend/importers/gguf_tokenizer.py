"""A `tokenizers.Tokenizer` rebuilt from GGUF metadata, the way llama.cpp tokenizes that file.

Two vocabulary kinds (`tokenizer.ggml.model`):
- "gpt2": byte-level BPE with the file's merges. The text split comes from `tokenizer.ggml.pre`, the name llama.cpp's
  converter gives to the original tokenizer.json pre-tokenizer (see `_BYTE_LEVEL_PRE`).
- "llama": SentencePiece BPE: pieces with scores (merge priority = score of the merged piece), `<0xNN>` byte
  fallback, spaces written as "▁" and a "▁" prepended to every text segment (`tokenizer.ggml.add_space_prefix`).
Tokens typed CONTROL become special tokens and USER_DEFINED ones plain added tokens; both match whole in the text.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Mapping

from gguf import TokenType
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from ember.errors import ModelFormatError

from .gguf import GGUFModel, read_gguf_metadata

__all__ = ["GGUFTokenizerInfo", "load_gguf_tokenizer", "save_tokenizer_files", "tokenizer_from_metadata"]


@dataclass(frozen=True)
class GGUFTokenizerInfo:
    tokenizer: Tokenizer  # adds BOS/EOS itself when add_bos_token/add_eos_token say so
    bos_token_id: int | None
    eos_token_id: int | None
    eos_token_ids: tuple[int, ...]  # end of generation: eos, then eot/eom when the file names them
    pad_token_id: int | None
    unk_token_id: int | None
    add_bos_token: bool
    add_eos_token: bool
    chat_template: str | None

    def token(self, token_id: int | None) -> str | None:
        return None if token_id is None else self.tokenizer.id_to_token(token_id)


def load_gguf_tokenizer(source: GGUFModel | str | os.PathLike[str]) -> GGUFTokenizerInfo:
    """The tokenizer of a GGUF file: an opened GGUFModel, or a path (vocab-only files work too)."""
    if isinstance(source, GGUFModel):
        return tokenizer_from_metadata(source.metadata, str(source.path))
    return tokenizer_from_metadata(read_gguf_metadata(source), str(source))


def tokenizer_from_metadata(metadata: Mapping[str, Any], source: str) -> GGUFTokenizerInfo:
    """Build from plain GGUF metadata; `source` names the file in errors."""
    meta = _Metadata(metadata, source)
    kind = meta.require("tokenizer.ggml.model", str)
    builders: dict[str, Callable[[_Metadata], tuple[Tokenizer, bool]]] = {
        "gpt2": _byte_level_bpe, "llama": _sentencepiece_bpe,
    }
    if kind not in builders:
        raise meta.error("tokenizer.ggml.model", f"unsupported tokenizer {kind!r} (supported: {', '.join(builders)})")
    tokenizer, default_add_bos = builders[kind](meta)
    _add_special_tokens(tokenizer, meta)

    bos, eos = meta.token_id("tokenizer.ggml.bos_token_id"), meta.token_id("tokenizer.ggml.eos_token_id")
    add_bos = meta.optional("tokenizer.ggml.add_bos_token", bool, default_add_bos)
    add_eos = meta.optional("tokenizer.ggml.add_eos_token", bool, False)
    if add_bos and bos is None:
        raise meta.error("tokenizer.ggml.bos_token_id", "missing, but the tokenizer adds a BOS token")
    if add_eos and eos is None:
        raise meta.error("tokenizer.ggml.eos_token_id", "missing, but the tokenizer adds an EOS token")
    if add_bos or add_eos:
        tokenizer.post_processor = _bos_eos_processor(meta, bos if add_bos else None, eos if add_eos else None)
    end_ids = [eos, meta.token_id("tokenizer.ggml.eot_token_id"), meta.token_id("tokenizer.ggml.eom_token_id")]
    return GGUFTokenizerInfo(
        tokenizer=tokenizer,
        bos_token_id=bos,
        eos_token_id=eos,
        eos_token_ids=tuple(dict.fromkeys(i for i in end_ids if i is not None)),
        pad_token_id=meta.token_id("tokenizer.ggml.padding_token_id"),
        unk_token_id=meta.token_id("tokenizer.ggml.unknown_token_id"),
        add_bos_token=add_bos,
        add_eos_token=add_eos,
        chat_template=meta.optional("tokenizer.chat_template", str, None),
    )


def save_tokenizer_files(info: GGUFTokenizerInfo, folder: str | os.PathLike[str]) -> None:
    """Write tokenizer.json and tokenizer_config.json (readable by transformers.AutoTokenizer too)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    info.tokenizer.save(str(folder / "tokenizer.json"))
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": info.token(info.bos_token_id),
        "eos_token": info.token(info.eos_token_id),
        "unk_token": info.token(info.unk_token_id),
        "pad_token": info.token(info.pad_token_id),
        "add_bos_token": info.add_bos_token,
        "add_eos_token": info.add_eos_token,
        "clean_up_tokenization_spaces": False,
    }
    if info.chat_template is not None:
        config["chat_template"] = info.chat_template
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


# -- metadata access -------------------------------------------------------------------------------------------------
class _Metadata:
    def __init__(self, metadata: Mapping[str, Any], source: str) -> None:
        self.values, self.source = metadata, source
        self.tokens: list[str] = self.require("tokenizer.ggml.tokens", list)
        if not self.tokens or not all(isinstance(t, str) for t in self.tokens):
            raise self.error("tokenizer.ggml.tokens", "expected a non-empty list of strings")
        if len(set(self.tokens)) != len(self.tokens):
            raise self.error("tokenizer.ggml.tokens", "holds duplicate tokens")
        types = self.optional("tokenizer.ggml.token_type", list, [int(TokenType.NORMAL)] * len(self.tokens))
        if len(types) != len(self.tokens):
            raise self.error("tokenizer.ggml.token_type", f"has {len(types)} entries for {len(self.tokens)} tokens")
        self.types: list[int] = types

    def error(self, key: str, problem: str) -> ModelFormatError:
        return ModelFormatError(f"{self.source}: {key}: {problem}")

    def require(self, key: str, kind: type) -> Any:
        if key not in self.values:
            raise ModelFormatError(f"{self.source}: missing metadata field {key}")
        return self.optional(key, kind, None)

    def optional(self, key: str, kind: type, default: Any) -> Any:
        value = self.values.get(key, default)
        if value is not None and not isinstance(value, kind):
            raise self.error(key, f"expected {kind.__name__}, found {type(value).__name__}")
        return value

    def token_id(self, key: str) -> int | None:
        value = self.optional(key, int, None)
        if value is not None and not 0 <= value < len(self.tokens):
            raise self.error(key, f"token id {value} is outside the vocabulary of {len(self.tokens)}")
        return value


# -- byte-level BPE ("gpt2") -----------------------------------------------------------------------------------------
# Split regexes of the original tokenizer.json files, as llama.cpp's llama-vocab.cpp quotes them.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)


@dataclass(frozen=True)
class _PreTokenizer:
    """How one family of byte-level vocabularies splits text before BPE."""

    pre_tokenizer: Callable[[], pre_tokenizers.PreTokenizer]
    normalizer: Callable[[], normalizers.Normalizer] | None = None
    ignore_merges: bool = False  # a whole pre-token found in the vocabulary is one token (llama3)
    add_bos: bool = False  # llama.cpp's default when the file has no tokenizer.ggml.add_bos_token


def _gpt2_split() -> pre_tokenizers.PreTokenizer:
    # GPT-2's regex: 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)


def _digits_then_gpt2_split() -> pre_tokenizers.PreTokenizer:
    # StarCoder/SmolLM: every digit on its own (llama.cpp: "\p{N}"), then GPT-2's regex.
    return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), _gpt2_split()])


def _regex_split(pattern: str) -> Callable[[], pre_tokenizers.PreTokenizer]:
    def build() -> pre_tokenizers.PreTokenizer:
        return pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    return build


_GPT2 = _PreTokenizer(_gpt2_split)
_STARCODER = _PreTokenizer(_digits_then_gpt2_split)
_LLAMA3 = _PreTokenizer(_regex_split(_LLAMA3_SPLIT), ignore_merges=True, add_bos=True)
_QWEN2 = _PreTokenizer(_regex_split(_QWEN2_SPLIT), normalizer=normalizers.NFC)
_BYTE_LEVEL_PRE: dict[str, _PreTokenizer] = {
    "default": _GPT2, "gpt-2": _GPT2, "gpt2": _GPT2, "mpt": _GPT2, "olmo": _GPT2, "phi-2": _GPT2,
    "smollm": _STARCODER, "starcoder": _STARCODER, "refact": _STARCODER, "codeshell": _STARCODER,
    "llama3": _LLAMA3, "llama-v3": _LLAMA3, "llama-bpe": _LLAMA3,
    "qwen2": _QWEN2, "deepseek-r1-qwen": _QWEN2,
}


@lru_cache(maxsize=1)
def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (printable Latin-1 bytes map to themselves)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    mapping = {b: chr(b) for b in printable}
    mapping.update({b: chr(256 + i) for i, b in enumerate(others)})
    return mapping


@lru_cache(maxsize=1)
def _byte_alphabet() -> frozenset[str]:
    return frozenset(_byte_to_unicode().values())


def _byte_level_spelling(token: str) -> str:
    """A vocabulary entry in the byte alphabet; entries already written in it are kept as they are."""
    if _byte_alphabet().issuperset(token):
        return token
    byte_map = _byte_to_unicode()
    return "".join(byte_map[b] for b in token.encode("utf-8"))


def _byte_level_bpe(meta: _Metadata) -> tuple[Tokenizer, bool]:
    pre_name = meta.optional("tokenizer.ggml.pre", str, "default")
    if pre_name not in _BYTE_LEVEL_PRE:
        raise meta.error("tokenizer.ggml.pre", f"unsupported pre-tokenizer {pre_name!r} "
                                               f"(supported: {', '.join(sorted(_BYTE_LEVEL_PRE))})")
    pre = _BYTE_LEVEL_PRE[pre_name]
    added = {int(TokenType.CONTROL), int(TokenType.USER_DEFINED)}
    vocab = {
        (token if kind in added else _byte_level_spelling(token)): index
        for index, (token, kind) in enumerate(zip(meta.tokens, meta.types))
    }
    merges = meta.require("tokenizer.ggml.merges", list)
    pairs = []
    for merge in merges:
        left, _, right = merge.partition(" ") if isinstance(merge, str) else ("", "", "")
        if not left or not right:
            raise meta.error("tokenizer.ggml.merges", f"bad merge {merge!r} (expected 'left right')")
        pairs.append((left, right))
    try:
        model = models.BPE(vocab=vocab, merges=pairs, ignore_merges=pre.ignore_merges)
    except Exception as exc:  # tokenizers raises a bare Exception for merges naming unknown tokens
        raise meta.error("tokenizer.ggml.merges", " ".join(str(exc).split())) from exc
    tokenizer = Tokenizer(model)
    tokenizer.normalizer = pre.normalizer() if pre.normalizer else None
    tokenizer.pre_tokenizer = pre.pre_tokenizer()
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer, pre.add_bos


# -- SentencePiece BPE ("llama") -------------------------------------------------------------------------------------
_SPACE = "\u2581"  # ▁


def _sentencepiece_merges(meta: _Metadata, scores: list[float]) -> list[tuple[str, str]]:
    """Merges implied by the pieces: every split of a normal piece into two normal pieces, best score first.

    llama.cpp merges the adjacent pair whose concatenation is the highest-scoring piece; ranking merges by that score
    makes BPE do the same.
    """
    normal = {int(TokenType.NORMAL), 0}  # 0 is llama.cpp's LLAMA_TOKEN_TYPE_UNDEFINED
    pieces = {token for token, kind in zip(meta.tokens, meta.types) if kind in normal}
    ranked = []
    for token, kind, score in zip(meta.tokens, meta.types, scores):
        if kind not in normal:
            continue
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in pieces and right in pieces:
                ranked.append((-score, -len(left), len(ranked), left, right))
    ranked.sort()
    return [(left, right) for *_, left, right in ranked]


def _sentencepiece_bpe(meta: _Metadata) -> tuple[Tokenizer, bool]:
    scores = meta.require("tokenizer.ggml.scores", list)
    if len(scores) != len(meta.tokens):
        raise meta.error("tokenizer.ggml.scores", f"has {len(scores)} entries for {len(meta.tokens)} tokens")
    unk_id = meta.token_id("tokenizer.ggml.unknown_token_id")
    vocab = {token: index for index, token in enumerate(meta.tokens)}
    model = models.BPE(
        vocab=vocab,
        merges=_sentencepiece_merges(meta, [float(s) for s in scores]),
        unk_token=meta.tokens[unk_id] if unk_id is not None else None,
        fuse_unk=True,
        byte_fallback=True,
    )
    tokenizer = Tokenizer(model)
    add_space_prefix = meta.optional("tokenizer.ggml.add_space_prefix", bool, True)
    # llama.cpp (like sentencepiece) puts "▁" before every text segment, even one starting with a space, and after
    # each special token; a normalizer does exactly that, Metaspace(prepend_scheme="first") would not.
    steps = [normalizers.Prepend(_SPACE)] if add_space_prefix else []
    tokenizer.normalizer = normalizers.Sequence([*steps, normalizers.Replace(" ", _SPACE)])
    decode_steps = [decoders.Replace(_SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    if add_space_prefix:
        decode_steps.append(decoders.Strip(" ", 1, 0))
    tokenizer.decoder = decoders.Sequence(decode_steps)
    return tokenizer, True


# -- shared ----------------------------------------------------------------------------------------------------------
def _add_special_tokens(tokenizer: Tokenizer, meta: _Metadata) -> None:
    """CONTROL and UNKNOWN tokens become special, USER_DEFINED ones plain added tokens (all matched whole)."""
    special_kinds = {int(TokenType.CONTROL), int(TokenType.UNKNOWN)}
    special = [AddedToken(t, special=True, normalized=False)
               for t, kind in zip(meta.tokens, meta.types) if kind in special_kinds]
    user = [AddedToken(t, special=False, normalized=False)
            for t, kind in zip(meta.tokens, meta.types) if kind == int(TokenType.USER_DEFINED)]
    tokenizer.add_special_tokens(special)
    tokenizer.add_tokens(user)
    if tokenizer.get_vocab_size(with_added_tokens=True) != len(meta.tokens):
        raise meta.error("tokenizer.ggml.tokens", "tokens do not map one to one onto ids (two share a spelling)")


def _bos_eos_processor(meta: _Metadata, bos: int | None, eos: int | None) -> processors.PostProcessor:
    head = [meta.tokens[bos]] if bos is not None else []
    tail = [meta.tokens[eos]] if eos is not None else []
    specials = [(meta.tokens[i], i) for i in dict.fromkeys(x for x in (bos, eos) if x is not None)]
    return processors.TemplateProcessing(
        single=[*head, "$A", *tail],
        pair=[*head, "$A", *tail, *head, "$B:1", *tail],
        special_tokens=specials,
    )
