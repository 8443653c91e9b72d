"""Errors a user can cause. The CLI prints them as one line (the traceback only with --verbose).

An error about an argument names it the way the caller spelled it: `max_tokens` from Python, `--max-tokens` on the
command line. Such errors are made with `Error.about("{max_tokens} must be ...")`: every `{name}` in the template is an
argument; `str(err)` spells it for Python and `err.cli_message` as the command-line option.
"""
from __future__ import annotations

import re
from typing import TypeVar

_ARGUMENT = re.compile(r"\{([a-z_][a-z0-9_]*)\}")
# Arguments not spelled `name` in Python and `--name-with-dashes` on the command line.
_SPELLINGS = {
    "force": ("force=True", "--force"),
    "random_weights": ("random_weights=True", "--random-weights"),
}

E = TypeVar("E", bound="EmberError")


def python_name(argument: str) -> str:
    return _SPELLINGS.get(argument, (argument, ""))[0]


def cli_option(argument: str) -> str:
    return _SPELLINGS.get(argument, ("", "--" + argument.replace("_", "-")))[1]


class EmberError(Exception):
    """Base class: a user-facing problem (bad input, missing file, wrong target) stated in one line."""

    def __init__(self, message: str = "", *, cli: str | None = None) -> None:
        super().__init__(message)
        self.cli_message = message if cli is None else cli

    @classmethod
    def about(cls: type[E], template: str) -> E:
        """An error naming arguments as `{argument}` (their Python names) in `template`."""
        python = _ARGUMENT.sub(lambda m: python_name(m.group(1)), template)
        return cls(python, cli=_ARGUMENT.sub(lambda m: cli_option(m.group(1)), template))


class ModelFormatError(EmberError):
    """A model file or folder (GGUF, safetensors, config.json) is malformed or unsupported."""


class ConfigError(EmberError):
    """A model configuration is missing a field or holds a bad value."""


class ArtifactError(EmberError):
    """A compiled artifact is missing, corrupt, or built for another target."""


class InputError(EmberError):
    """A runtime input is invalid (token id outside the vocabulary, prompt longer than the context...)."""


class CompilerLoadedWarning(UserWarning):
    """ember's runtime found tvm already imported with its compiler and runs on it as is."""
