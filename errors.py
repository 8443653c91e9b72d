"""Errors a user can cause. The CLI prints them as one line (the traceback only with --verbose)."""
from __future__ import annotations


class EmberError(Exception):
    """Base class: a user-facing problem (bad input, missing file, wrong target) stated in one line."""


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
