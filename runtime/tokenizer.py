"""The artifact's tokenizer: `tokenizers` for text <-> ids, the manifest's TokenizerInfo for special tokens,
and chat templates rendered with jinja2 the way Hugging Face does (sandboxed, `raise_exception`, `tojson`)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

from ..errors import ArtifactError, InputError
from .artifact import TokenizerInfo


class Tokenizer:
    """Special tokens come from the manifest; tokenizer.json (~0.13 s to parse for a 49k vocabulary) is read on
    first use, so loading an engine that is only given token ids never pays for it."""

    def __init__(self, path: str | Path, info: TokenizerInfo) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ArtifactError(f"{self.path}: tokenizer file is missing")
        self.info = info
        self.bos_token_id = info.bos_token_id
        self.eos_token_ids = list(info.eos_token_ids)

    @cached_property
    def _tok(self) -> Any:
        from tokenizers import Tokenizer as HFTokenizer

        try:
            return HFTokenizer.from_file(str(self.path))
        except Exception as err:  # tokenizers raises a bare Exception on malformed json
            raise ArtifactError(f"{self.path}: cannot read the tokenizer ({err})") from None

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def token(self, token_id: int | None) -> str:
        return "" if token_id is None else (self._tok.id_to_token(token_id) or "")

    def encode(self, text: str, add_bos: bool | None = None) -> list[int]:
        """Text to ids. BOS is prepended when the manifest says so (add_bos=None), unless the text already starts
        with it (a chat template usually writes it)."""
        ids = list(self._tok.encode(text, add_special_tokens=False).ids)
        add_bos = self.info.add_bos_token if add_bos is None else add_bos
        if add_bos and self.bos_token_id is not None and (not ids or ids[0] != self.bos_token_id):
            ids.insert(0, self.bos_token_id)
        return ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def stream_decoder(self) -> StreamDecoder:
        return StreamDecoder(self)

    # -- chat -----------------------------------------------------------------------------------------------
    @cached_property
    def _template(self) -> Any:
        if not self.info.chat_template:
            raise InputError("this artifact's tokenizer has no chat template; use a plain prompt")
        return compile_chat_template(self.info.chat_template)

    def apply_chat_template(
        self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True, **extra: Any
    ) -> str:
        import jinja2

        for i, m in enumerate(messages):
            if not isinstance(m, Mapping) or "role" not in m or "content" not in m:
                raise InputError(f"message {i} must be a dict with 'role' and 'content', got {m!r}")
        context = {
            "messages": [dict(m) for m in messages],
            "add_generation_prompt": add_generation_prompt,
            "bos_token": self.token(self.bos_token_id),
            "eos_token": self.token(self.eos_token_ids[0] if self.eos_token_ids else None),
            "tools": None,
            "documents": None,
        } | extra
        try:
            return self._template.render(**context)
        except jinja2.TemplateError as err:
            raise InputError(f"chat template error: {_one_line(err)}") from None
        except (RecursionError, MemoryError) as err:
            raise InputError(f"chat template error: {type(err).__name__} (a template that calls itself?)") from None
        except Exception as err:  # the template's own code failed (1 / 0, a method on the wrong type, ...)
            raise InputError(f"chat template error: {type(err).__name__}: {_one_line(err)}") from None


def compile_chat_template(source: str) -> Any:
    """The template, compiled in ember's bounded sandbox (runtime/chat_template.py)."""
    import jinja2

    from .chat_template import compile_chat_template as compile_bounded

    try:
        return compile_bounded(source)
    except jinja2.TemplateSyntaxError as err:
        raise ArtifactError(f"the chat template does not parse (line {err.lineno}: {err.message})") from None
    except (RecursionError, MemoryError, ValueError, TypeError) as err:  # a pathological source
        raise ArtifactError(f"the chat template does not parse ({type(err).__name__}: {err})") from None


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())[:300]


class StreamDecoder:
    """Incremental detokenization: `push(id)` returns the new text, holding back an incomplete multi-byte character.

    Each step decodes a short window (the tokens since the last emitted boundary) twice, with and without the new
    tokens, and emits the difference once it does not end in U+FFFD. Decoding a window rather than single tokens
    keeps tokenizer-specific spacing (e.g. SentencePiece's leading "▁") right.
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix = 0  # start of the decode window
        self.read = 0  # tokens up to here have been emitted

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        before = self.tokenizer.decode(self.ids[self.prefix : self.read])
        after = self.tokenizer.decode(self.ids[self.prefix :])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            return after[len(before) :]
        return ""

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character at the very end comes out as U+FFFD)."""
        before = self.tokenizer.decode(self.ids[self.prefix : self.read])
        after = self.tokenizer.decode(self.ids[self.prefix :])
        self.prefix = self.read = len(self.ids)
        return after[len(before) :]
