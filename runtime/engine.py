"""`Engine`: an artifact loaded on a device, ready to generate, chat and score."""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import ArtifactError, InputError
from .artifact import Manifest, read_manifest
from .generate import RANDOM_WEIGHTS_NOTE, SEQ_ID, GenerationResult, check_max_tokens, generate
from .loader import LoadedArtifact, load_artifact, parse_device
from .model_runner import DEFAULT_CONTEXT_CAP, ModelRunner
from .perplexity import PerplexityResult
from .random_weights import RandomFill
from .sampler import SamplingParams
from .tokenizer import Tokenizer


class Engine:
    def __init__(self, artifact: LoadedArtifact, runner: ModelRunner, tokenizer: Tokenizer | None) -> None:
        self.artifact = artifact
        self.runner = runner
        self.tokenizer = tokenizer

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        device: str = "cpu",
        max_batch_size: int = 1,
        context_length: int | None = None,
        verify: bool = False,
        weights: Mapping[str, Any] | None = None,
        prefill_chunk_size: int | None = None,
        random_fill: RandomFill | None = None,
        verify_progress: Callable[[int, int, str], None] | None = None,
    ) -> Engine:
        """Load an artifact folder. `context_length` (<= the artifact's) sizes the KV cache; `weights` (name ->
        array) is required for library-only artifacts and replaces the shipped weights otherwise. Every load checks
        file sizes and the manifest's own hash; `verify=True` also checks every file's sha256 (`--check`), telling
        `verify_progress(bytes_done, bytes_total, file)` after each 4 MiB block."""
        check_load_arguments(read_manifest(path), device, max_batch_size, context_length, prefill_chunk_size)
        artifact = load_artifact(path, device=device, verify=verify, weights=weights, random_fill=random_fill,
                                 verify_progress=verify_progress)
        runner = ModelRunner(
            artifact,
            max_batch_size=max_batch_size,
            context_length=context_length,
            prefill_chunk_size=prefill_chunk_size,
        )
        info = artifact.manifest.tokenizer
        tokenizer = Tokenizer(artifact.path / info.file, info) if info is not None else None
        return cls(artifact, runner, tokenizer)

    @classmethod
    def load_sharded(cls, path: str | os.PathLike, devices: str, context_length: int | None = None,
                     prefill_chunk_size: int | None = None, max_batch_size: int = 1) -> Engine:
        """A tensor-parallel artifact, one shard per device of `devices`: cuda:0-3 (cuda builds: a GPU per shard,
        NCCL between them) or cpu (cpu builds); every shard a thread of this process (tensor_parallel.py)."""
        from .tensor_parallel import ShardedRunner

        manifest = read_manifest(path)
        check_load_arguments(manifest, manifest.target.kind, max_batch_size, context_length, prefill_chunk_size)
        runner = ShardedRunner(path, devices, context_length=context_length, prefill_chunk_size=prefill_chunk_size,
                               max_batch_size=max_batch_size)
        artifact = runner.artifact
        info = artifact.manifest.tokenizer
        tokenizer = Tokenizer(artifact.path / info.file, info) if info is not None else None
        return cls(artifact, runner, tokenizer)  # type: ignore[arg-type]

    # -- facts ----------------------------------------------------------------------------------------------
    @property
    def manifest(self) -> Manifest:
        return self.artifact.manifest

    @property
    def random_weights(self) -> bool:
        return self.manifest.is_benchmark_build

    @property
    def threads(self) -> int | None:
        """Threads of TVM's CPU pool for kernels launched from this thread (None off the cpu)."""
        if self.artifact.manifest.target.kind != "cpu":
            return None
        from .threads import pool_size

        return pool_size()

    @property
    def eos_token_ids(self) -> list[int]:
        if self.tokenizer is not None:
            return list(self.tokenizer.eos_token_ids)
        eos = self.manifest.config.get("eos_token_id")
        return [] if eos is None else [eos] if isinstance(eos, int) else list(eos)

    @property
    def where(self) -> str:
        """The device, or a tensor-parallel artifact's devices (one per shard)."""
        devices = getattr(self.runner, "devices", None)
        return f"{', '.join(devices)} ({len(devices)} shards)" if devices else str(self.artifact.device)

    def describe(self) -> str:
        m = self.manifest
        threads = f", {self.threads} threads" if self.threads else ""
        line = (
            f"{m.name} ({m.architecture}, {m.quantization}) on {self.where}{threads}, "
            f"context {self.runner.context_length}"
        )
        return f"{line}; {RANDOM_WEIGHTS_NOTE}" if self.random_weights else line

    def encode(self, prompt: str | Sequence[int]) -> list[int]:
        if not isinstance(prompt, (str, Sequence, np.ndarray)) or isinstance(prompt, (bytes, bytearray)):
            raise InputError.about(f"{{prompt}} must be a string or a list of token ids, got {type(prompt).__name__}")
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ArtifactError(f"artifact {self.manifest.name} has no tokenizer; pass token ids instead of text")
            return self.tokenizer.encode(prompt)
        return [int(t) for t in self.runner.check_tokens(list(prompt), what="prompt token")]

    # -- work -----------------------------------------------------------------------------------------------
    def generate(
        self,
        prompt: str | Sequence[int],
        max_tokens: int = 128,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
        stream: Callable[[str], None] | None = None,
        min_p: float = 0.0,
        repetition_penalty: float = 1.0,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
    ) -> GenerationResult:
        sampling = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, min_p=min_p,
                                  repetition_penalty=repetition_penalty, presence_penalty=presence_penalty,
                                  frequency_penalty=frequency_penalty)
        check_max_tokens(max_tokens)
        if stream is not None and not callable(stream):
            raise InputError.about(f"{{stream}} must be a function taking a str, got {type(stream).__name__}")
        return generate(
            self.runner,
            self.encode(prompt),
            max_tokens=max_tokens,
            sampling=sampling,
            eos_token_ids=self.eos_token_ids,
            tokenizer=self.tokenizer,
            stream=stream,
            random_weights=self.random_weights,
        )

    def chat(
        self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True, **kwargs: Any
    ) -> GenerationResult:
        """Render the chat template (as Hugging Face does) and generate the assistant's reply."""
        if self.tokenizer is None:
            raise ArtifactError(f"artifact {self.manifest.name} has no tokenizer, so it cannot chat")
        check_messages(messages)
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)
        return self.generate(self.tokenizer.encode(text, add_bos=False), **kwargs)

    def score(self, token_ids: Sequence[int]) -> np.ndarray:
        """float32 logits (len, vocab) at every position of token_ids: one prefill, chunked if needed."""
        ids = self.runner.check_tokens(list(token_ids))
        if ids.size == 0:
            raise InputError("nothing to score (empty token list)")
        if ids.size > self.runner.context_length:
            raise InputError(
                f"{ids.size} tokens exceed the context length {self.runner.context_length} of {self.manifest.name}"
            )
        self.runner.reset()
        self.runner.add_sequence(SEQ_ID)
        try:
            return self.runner.prefill([SEQ_ID], [ids], all_logits=True)
        finally:
            self.runner.remove_sequence(SEQ_ID)


    def perplexity(self, text: str | Sequence[int], **options: Any) -> PerplexityResult:
        """Perplexity of a text (tokenized with the artifact's tokenizer) or of token ids, by sliding windows over
        the prefill; `options` are runtime.perplexity.perplexity's (context, stride, scoring, max_tokens,
        progress). The KV cache must hold a window (load with context_length >= the window)."""
        from .perplexity import perplexity

        return perplexity(self, self.encode(text), **options)


def check_load_arguments(manifest: Manifest, device: str, max_batch_size: int, context_length: int | None,
                         prefill_chunk_size: int | None) -> None:
    """What Engine.load's arguments must be, checked against the manifest before anything is loaded."""
    try:
        known = isinstance(device, str) and bool(parse_device(device))
    except InputError:
        known = False
    if not known:
        raise InputError.about(f"{{device}} {device!r}: unknown device (use cpu, cuda or cuda:N)")
    if not _is_int(max_batch_size) or max_batch_size < 1:
        raise InputError.about(f"{{max_batch_size}} must be an integer >= 1, got {max_batch_size!r}")
    if context_length is not None and (not _is_int(context_length)
                                       or not 1 <= context_length <= manifest.context_length):
        raise InputError.about(f"{{context_length}} {context_length!r} must be in [1, {manifest.context_length}] "
                               f"for {manifest.name}")
    if prefill_chunk_size is not None and (not _is_int(prefill_chunk_size) or prefill_chunk_size < 1):
        raise InputError.about(f"{{prefill_chunk_size}} must be an integer >= 1, got {prefill_chunk_size!r}")


def planned_context(manifest: Manifest, context_length: int | None = None) -> int:
    """Tokens per sequence the KV cache of `Engine.load(context_length=...)` holds (as ModelRunner sizes it)."""
    return context_length if context_length is not None else min(manifest.context_length, DEFAULT_CONTEXT_CAP)


def check_messages(messages: object) -> None:
    """A chat is a non-empty list of {"role": str, "content": str} dicts."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise InputError.about(f"{{messages}} must be a list of {{'role': ..., 'content': ...}} dicts, "
                               f"got {type(messages).__name__}")
    if not messages:
        raise InputError.about("{messages} is empty: give at least one message to answer")
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping) or not isinstance(message.get("role"), str) \
                or not isinstance(message.get("content"), str):
            raise InputError.about(f"{{messages}}[{i}] must be a dict with a string 'role' and a string 'content', "
                                   f"got {message!r}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
