"""Typed reads of config.json fields: each names the file and the field when the value is missing, of the wrong
type or out of range (`config.json: field 'hidden_size' must be a positive integer, got '576'`)."""
from __future__ import annotations

import math
from typing import Any

from ..errors import ConfigError

_MISSING = object()


class Fields:
    """The fields of one config dict; `where` names it in errors (a path, "preset llama3-8b", "rope_scaling"...)."""

    def __init__(self, raw: Any, source: str, prefix: str = "") -> None:
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: expected a JSON object, got {type(raw).__name__}")
        self.raw, self.source, self.prefix = raw, source, prefix

    def error(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.source}: field '{self.prefix}{key}' {problem}")

    def given(self, key: str) -> bool:
        """The field is there and not null (null means "the default" in transformers' configs)."""
        return self.raw.get(key) is not None

    def _value(self, key: str) -> Any:
        if not self.given(key):
            raise ConfigError(f"{self.source}: missing field '{self.prefix}{key}'")
        return self.raw[key]

    # Each reader: a missing or null field gives `default` (unchecked), or is an error when there is none.
    def positive_int(self, key: str, default: Any = _MISSING) -> Any:
        if default is not _MISSING and not self.given(key):
            return default
        value = self._value(key)
        if not _is_int(value) or value <= 0:
            raise self.error(key, f"must be a positive integer, got {value!r}")
        return value

    def positive_float(self, key: str, default: Any = _MISSING) -> Any:
        if default is not _MISSING and not self.given(key):
            return default
        value = self._value(key)
        if not _is_number(value) or not math.isfinite(value) or value <= 0:
            raise self.error(key, f"must be a finite number > 0, got {value!r}")
        return float(value)

    def boolean(self, key: str, default: bool) -> bool:
        if not self.given(key):
            return default
        value = self.raw[key]
        if not isinstance(value, bool):
            raise self.error(key, f"must be true or false, got {value!r}")
        return value

    def string(self, key: str, default: Any = _MISSING, choices: tuple[str, ...] = ()) -> Any:
        if default is not _MISSING and not self.given(key):
            return default
        value = self._value(key)
        if not isinstance(value, str):
            raise self.error(key, f"must be a string, got {value!r}")
        if choices and value not in choices:
            raise self.error(key, f"is {value!r}, which ember does not support (supported: {', '.join(choices)})")
        return value

    def token_id(self, key: str) -> int | None:
        if not self.given(key):
            return None
        value = self.raw[key]
        if not _is_int(value) or value < 0:
            raise self.error(key, f"must be a token id (an integer >= 0), got {value!r}")
        return value

    def token_ids(self, key: str) -> list[int]:
        """An id or a list of ids (eos_token_id); missing or null: none."""
        value = self.raw.get(key)
        values = [] if value is None else value if isinstance(value, list) else [value]
        if not all(_is_int(v) and v >= 0 for v in values):
            raise self.error(key, f"must be a token id >= 0 or a list of them, got {value!r}")
        return list(values)

    def section(self, key: str) -> "Fields | None":
        """A nested object (rope_scaling), or None when missing or null."""
        if not self.given(key):
            return None
        value = self.raw[key]
        if not isinstance(value, dict):
            raise self.error(key, f"must be an object, got {value!r}")
        return Fields(value, self.source, prefix=f"{self.prefix}{key}.")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
