"""Structured output: OpenAI's `response_format` (json_object, json_schema) as a grammar that constrains sampling,
through llguidance (the optional `[grammar]` extra; it has no Python dependencies, so a device install needs no
torch). Each constrained sequence has a matcher; before each sample its token bitmask sets the logits of every
token the grammar does not allow to -inf, and the sampled token advances it. The mask is applied to host logits
(`mask`, host sampling) or goes to the device as it is (`fill_mask`: cuda's sample_ext applies it; DESIGN.md,
"Serving").
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence as Seq
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import InputError

GRAMMAR_EXTRA = "response_format needs the [grammar] extra: pip install 'ember[grammar]' (llguidance)"


def schema_of(response_format: Mapping[str, Any]) -> dict[str, Any] | None:
    """The JSON schema a response_format asks for (None: plain text). Raises InputError naming the field."""
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "object"}
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, Mapping) or not isinstance(spec.get("schema", {}), Mapping):
            raise InputError("response_format.json_schema must be an object with a 'schema' object")
        return dict(spec.get("schema") or {})
    raise InputError(f"response_format.type must be 'text', 'json_object' or 'json_schema', got {kind!r}")


class Grammars:
    """Matchers for one artifact's tokenizer (its llguidance tokenizer is built once, on first use)."""

    def __init__(self, tokenizer_file: Path, vocab_size: int, eos_token_ids: Seq[int]) -> None:
        self.tokenizer_file = tokenizer_file
        self.vocab_size = vocab_size
        self.eos = list(eos_token_ids)

    @cached_property
    def _tokenizer(self) -> Any:
        try:
            from llguidance import LLTokenizer
        except ImportError:
            raise InputError(GRAMMAR_EXTRA) from None
        return LLTokenizer(self.tokenizer_file.read_text(), n_vocab=self.vocab_size,
                           eos_token=self.eos if len(self.eos) > 1 else self.eos[0])

    def constraint(self, schema: Mapping[str, Any]) -> Constraint:
        """A fresh matcher for `schema`; an invalid schema raises InputError with llguidance's reason."""
        tokenizer = self._tokenizer
        from llguidance import LLMatcher

        try:
            grammar = LLMatcher.grammar_from_json_schema(json.dumps(schema),
                                                         defaults={"whitespace_flexible": False})
        except ValueError as err:
            raise InputError(f"response_format: the schema is not valid JSON ({err})") from None
        problem = LLMatcher.validate_grammar(grammar, tokenizer)
        if problem and not problem.startswith("WARNING"):
            raise InputError(f"response_format: the schema cannot be used ({problem.strip()})")
        return Constraint(LLMatcher(tokenizer, grammar, log_level=0), self.vocab_size)


class Constraint:
    """One sequence's grammar state: `mask(row)` before a sample, `advance(token)` after it."""

    def __init__(self, matcher: Any, vocab_size: int) -> None:
        self.matcher = matcher
        self.vocab_size = vocab_size
        self._bits = np.zeros((vocab_size + 31) // 32, dtype=np.int32)

    def copy(self) -> Constraint:
        return Constraint(self.matcher.deep_copy(), self.vocab_size)

    def fill_mask(self, words: np.ndarray) -> None:
        """The allowed tokens now into `words` (contiguous int32 [ceil(vocab / 32)]: token i is bit i % 32 of
        word i // 32)."""
        if words.dtype != np.int32 or words.size != self._bits.size or not words.flags.c_contiguous:
            raise ValueError(f"a token mask needs {self._bits.size} contiguous int32 words")
        self.matcher.unsafe_compute_mask_ptr(words.ctypes.data, words.nbytes)

    def mask(self, row: np.ndarray) -> np.ndarray:
        """The row with every disallowed token at -inf (a copy: the row is the runner's buffer)."""
        self.fill_mask(self._bits)
        allowed = np.unpackbits(self._bits.view(np.uint8), bitorder="little")[: row.size].astype(bool)
        out = np.full_like(row, -np.inf)
        out[allowed] = row[allowed]
        return out

    def advance(self, token: int) -> None:
        if not self.matcher.consume_token(token):
            raise InputError(f"the grammar rejected token {token}: {self.matcher.get_error()}")

    @property
    def done(self) -> bool:
        """The grammar allows nothing more (the output is complete)."""
        return self.matcher.is_stopped()
