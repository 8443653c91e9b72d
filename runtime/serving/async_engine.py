"""`AsyncEngine`: an artifact served to many concurrent callers, each with an async stream of outputs.

    engine = ember.load_async("compiled/smollm2-cpu", max_seqs=16)
    async for out in engine.generate("Once upon a time", max_tokens=32):
        print(out.text, end="")

The engine loop runs in its own thread (`core.EngineCore`); each stream is an asyncio queue fed from that thread.
Leaving the `async for` early (or cancelling the task) aborts the request: its pages are freed within one step.
"""
from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence as Seq
from typing import Any

from ...errors import InputError
from ..engine import Engine
from ..generate import check_max_tokens
from ..model_runner import DEFAULT_CONTEXT_CAP
from ..sampler import SamplingParams
from .core import EngineCore
from .grammar import Constraint, Grammars, schema_of
from .sampling import HostSampling
from .sequence import Output, Request


MAX_LOGPROBS = 20


def _deliver_all(items: list[tuple[Callable[[Output], None], Output]]) -> None:
    for deliver, out in items:
        deliver(out)


class QueueFull(InputError):
    """More requests are waiting than the engine queues (`max_queue`): try again later."""


class AsyncEngine:
    def __init__(self, engine: Engine, *, max_seqs: int, max_queue: int = 256, token_budget: int | None = None,
                 kv_tokens: int | None = None, context_length: int | None = None,
                 prefill_chunk_size: int | None = None, cached_seqs: int | None = None,
                 device_sampling: bool | None = None) -> None:
        from ..model_runner import ModelRunner

        if cached_seqs is None:
            cached_seqs = max_seqs
        kv = engine.manifest.kv_cache
        if kv.sliding_window is not None and not kv.window_in_kernels:
            cached_seqs = 0  # TVM cannot fork a sequence under its own sliding window
        self.engine = engine  # the manifest, tokenizer and chat template; the runner below owns the serving cache
        # the KV cache's sequence slots: the running batch and the finished sequences the prefix cache keeps
        if context_length is None:
            context_length = min(engine.manifest.context_length, DEFAULT_CONTEXT_CAP)
        if kv_tokens is None:  # max_seqs full contexts, in whole pages
            page = engine.manifest.kv_cache.page_size
            kv_tokens = -(-context_length // page) * page * max_seqs
        options = dict(max_batch_size=max_seqs + cached_seqs, context_length=context_length,
                       prefill_chunk_size=prefill_chunk_size, kv_tokens=kv_tokens)
        sibling = getattr(engine.runner, "sibling", None)  # a tensor-parallel engine: every shard gets its cache
        self.runner = sibling(**options) if sibling is not None else ModelRunner(engine.artifact, **options)
        self.core = EngineCore(self.runner, engine.tokenizer, engine.eos_token_ids, max_seqs=max_seqs,
                               token_budget=token_budget, cached_seqs=cached_seqs, device_sampling=device_sampling)
        tok = engine.tokenizer
        self.grammars = (Grammars(tok.path, self.runner.vocab_size, engine.eos_token_ids)
                         if tok is not None else None)
        self.max_queue = max_queue
        self.in_flight = 0  # submitted, final output not yet delivered (event loop side)
        # outputs of one engine pass, per caller's event loop: one wake-up of each loop per pass, not one per token
        # (a wake-up is a socket write; 64 streams made 64 a step)
        self._outbox: dict[asyncio.AbstractEventLoop, list[tuple[Callable[[Output], None], Output]]] = {}
        self.core.on_pass = self._send_outbox
        self.core.start()

    def _send_outbox(self) -> None:
        """On the engine thread, after each pass: hand each loop its outputs in one call."""
        if not self._outbox:
            return
        boxes, self._outbox = self._outbox, {}
        for loop, items in boxes.items():
            try:
                loop.call_soon_threadsafe(_deliver_all, items)
            except RuntimeError:  # the caller's loop is closed: nobody is listening
                self.in_flight -= sum(1 for _, out in items if out.finish_reason is not None)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "cpu", *, max_seqs: int = 16, max_queue: int = 256,
             context_length: int | None = None, kv_tokens: int | None = None, token_budget: int | None = None,
             prefill_chunk_size: int | None = None, prefix_cache: bool | int = True,
             memory_utilization: float | None = None, device_sampling: bool | None = None,
             devices: str | None = None, **load_kwargs: Any) -> AsyncEngine:
        """Load an artifact to serve. `max_seqs` sequences run at once; `kv_tokens` (default: max_seqs full
        contexts) sizes the KV cache, which the scheduler shares out page by page. `prefix_cache` keeps finished
        sequences in the KV cache (True: up to max_seqs of them, an int: that many, False: none) so requests that
        share a prompt prefix fork their pages instead of computing it again. `memory_utilization` (instead of
        kv_tokens) sizes the KV cache to that fraction of the device memory free once the weights are loaded.
        `device_sampling` False samples on the host even where the artifact has a device sampler (None: where it
        has one). `devices` (cuda:0-3, cpu): a tensor-parallel artifact's, one per shard (Engine.load_sharded);
        its shards sample on the host."""
        from ..artifact import read_manifest

        # the Engine's own one-sequence cache stays small: serving makes its own, of max_seqs sequences
        small = min(read_manifest(path).context_length, 256)
        if devices is not None:
            if load_kwargs:
                raise InputError(f"{', '.join(load_kwargs)}: not taken with devices (a tensor-parallel artifact)")
            engine = Engine.load_sharded(path, devices, context_length=small)
        else:
            engine = Engine.load(path, device=device, context_length=small, **load_kwargs)
        if max_seqs is None or isinstance(max_seqs, bool) or not isinstance(max_seqs, int) or max_seqs < 1:
            raise InputError.about(f"{{max_seqs}} must be an integer >= 1, got {max_seqs!r}")
        if context_length is None:
            context_length = min(engine.manifest.context_length, DEFAULT_CONTEXT_CAP)
        if isinstance(prefix_cache, bool):
            cached = max_seqs if prefix_cache else 0
        elif isinstance(prefix_cache, int) and prefix_cache >= 0:
            cached = prefix_cache
        else:
            raise InputError.about(f"{{prefix_cache}} must be true, false or a count >= 0, got {prefix_cache!r}")
        if memory_utilization is not None:
            if kv_tokens is not None:
                raise InputError("give kv_tokens or memory_utilization, not both")
            from .memory import kv_tokens_from_memory

            page = engine.manifest.kv_cache.page_size
            kv_tokens = kv_tokens_from_memory(engine.manifest.kv_cache, engine.artifact.device, memory_utilization,
                                              context_length, -(-context_length // page) * page * (max_seqs + cached))
        return cls(engine, max_seqs=max_seqs, max_queue=max_queue, token_budget=token_budget, kv_tokens=kv_tokens,
                   context_length=context_length, prefill_chunk_size=prefill_chunk_size, cached_seqs=cached,
                   device_sampling=device_sampling)

    # -- facts ----------------------------------------------------------------------------------------------
    @property
    def context_length(self) -> int:
        return self.runner.context_length

    @property
    def samples_on_device(self) -> bool:
        return not isinstance(self.core.sampling, HostSampling)

    @property
    def name(self) -> str:
        return self.engine.manifest.name

    def stats(self) -> dict[str, int]:
        core = self.core
        cache = core.prefix_cache
        return {"waiting": max(core.queue_depth, self.waiting), "running": core.running,
                "kv_pages_used": core.pages_used, "kv_pages_cached": core.scheduler.cached_pages,
                "kv_pages_total": core.scheduler.total_pages, "preempted": core.stats.preempted,
                "generated_tokens": core.stats.generated_tokens, "prompt_tokens": core.stats.prompt_tokens,
                "prefix_cache_hits": cache.hits if cache else 0,
                "prefix_cache_hit_tokens": cache.hit_tokens if cache else 0}

    def encode_chat(self, messages: Seq[Any]) -> list[int]:
        from ..engine import check_messages

        tok = self.engine.tokenizer
        if tok is None:
            raise InputError(f"artifact {self.name} has no tokenizer, so it cannot chat")
        check_messages(messages)
        return tok.encode(tok.apply_chat_template(messages, add_generation_prompt=True), add_bos=False)

    def check_request(self, prompt: str | Seq[int], max_tokens: int | None) -> tuple[list[int], int]:
        """The prompt's ids and max_tokens (None: what the context leaves), checked against the context."""
        ids = self.engine.encode(prompt)
        if not ids:
            raise InputError("the prompt is empty")
        if len(ids) >= self.context_length:
            raise InputError(f"the prompt has {len(ids)} tokens, but the context length of {self.name} is "
                             f"{self.context_length} (prompt and output together)")
        if max_tokens is None:
            max_tokens = self.context_length - len(ids)
        check_max_tokens(max_tokens)
        if len(ids) + max_tokens > self.context_length:
            raise InputError(f"the prompt has {len(ids)} tokens and max_tokens is {max_tokens}: together more than "
                             f"the context length {self.context_length} of {self.name}")
        return ids, max_tokens

    def check_logit_bias(self, logit_bias: Mapping[Any, Any] | None) -> dict[int, float] | None:
        """{token id: bias}, ids as ints or their decimal strings (JSON keys), biases in [-100, 100]."""
        if not logit_bias:
            return None
        if not isinstance(logit_bias, Mapping):
            raise InputError("logit_bias must map token ids to numbers")
        out = {}
        vocab = self.runner.vocab_size
        for key, value in logit_bias.items():
            try:
                token = int(key)
            except (TypeError, ValueError):
                raise InputError(f"logit_bias: {key!r} is not a token id") from None
            if isinstance(key, bool) or not 0 <= token < vocab:
                raise InputError(f"logit_bias: token id {key!r} is outside the vocabulary [0, {vocab})")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not -100 <= value <= 100:
                raise InputError(f"logit_bias[{key!r}] must be a number in [-100, 100], got {value!r}")
            out[token] = float(value)
        return out

    def constraint(self, response_format: Mapping[str, Any]) -> Constraint | None:
        """The grammar state for an OpenAI response_format (None for plain text)."""
        if not isinstance(response_format, Mapping):
            raise InputError("response_format must be an object")
        schema = schema_of(response_format)
        if schema is None:
            return None
        if self.grammars is None:
            raise InputError(f"artifact {self.name} has no tokenizer, so it cannot follow a response_format")
        return self.grammars.constraint(schema)

    # -- work -----------------------------------------------------------------------------------------------
    @property
    def waiting(self) -> int:
        """Requests submitted and not yet running (those the engine thread has not picked up count too)."""
        return max(0, self.in_flight - self.core.running)

    def generate(self, prompt: str | Seq[int], *, max_tokens: int | None = None,
                 sampling: SamplingParams | None = None, stop: Seq[str] = (),
                 stop_token_ids: Seq[int] = (), request_id: str | None = None, logprobs: int | None = None,
                 logit_bias: Mapping[int, float] | None = None, response_format: Mapping[str, Any] | None = None,
                 constraint: Constraint | None = None, follows: str | None = None, ignore_eos: bool = False,
                 **sampling_kwargs: Any) -> AsyncIterator[Output]:
        """Submit one request now and return its outputs as an async iterator; the last has `finish_reason` set.
        `logprobs` k: each output token's log-probability and the k most likely; `logit_bias`: {token id: value
        added to its logit}; `response_format`: OpenAI's (json_object / json_schema: the output follows the
        schema; needs the [grammar] extra); `follows`: the id of a request in flight with the same prompt, whose
        prompt pages this one forks (n > 1 choices).
        Raises QueueFull when `max_queue` requests already wait, InputError for a bad request (nothing queued).
        Call it from a running event loop: the outputs are delivered to that loop."""
        ids, max_tokens = self.check_request(prompt, max_tokens)
        if logprobs is not None and (isinstance(logprobs, bool) or not isinstance(logprobs, int)
                                     or not 0 <= logprobs <= MAX_LOGPROBS):
            raise InputError(f"logprobs must be an integer in [0, {MAX_LOGPROBS}], got {logprobs!r}")
        bias = self.check_logit_bias(logit_bias)
        if constraint is None and response_format is not None:
            constraint = self.constraint(response_format)
        if sampling is None:
            sampling = SamplingParams(**sampling_kwargs)
        if isinstance(stop, str):
            stop = [stop]
        if stop and self.engine.tokenizer is None:
            raise InputError(f"stop strings need text, and artifact {self.name} has no tokenizer")
        if self.waiting >= self.max_queue:
            raise QueueFull(f"{self.waiting} requests are waiting already (the queue holds {self.max_queue}); "
                            "try again shortly")
        request = Request(request_id or uuid.uuid4().hex, ids, max_tokens, sampling, list(stop),
                          list(stop_token_ids), logprobs, bias, follows, constraint, bool(ignore_eos))
        loop = asyncio.get_running_loop()
        outputs: asyncio.Queue[Output] = asyncio.Queue()

        def deliver(out: Output) -> None:  # on the caller's loop
            if out.finish_reason is not None:
                self.in_flight -= 1
            outputs.put_nowait(out)

        def sink(out: Output) -> None:  # on the engine thread; sent at the end of the engine's pass
            self._outbox.setdefault(loop, []).append((deliver, out))

        self.in_flight += 1
        self.core.submit(request, sink)
        return self._stream(request.request_id, outputs)

    async def _stream(self, request_id: str, outputs: asyncio.Queue[Output]) -> AsyncIterator[Output]:
        done = False
        try:
            while not done:
                out = await outputs.get()
                done = out.finish_reason is not None
                yield out
        finally:
            if not done:
                self.core.abort(request_id)

    async def complete(self, prompt: str | Seq[int], **kwargs: Any) -> Output:
        """The whole output of one request at once (text and ids joined)."""
        text, ids, last, outs = [], [], None, []
        async for out in self.generate(prompt, **kwargs):
            outs.append(out)
            text.append(out.text)
            ids += out.token_ids
            last = out
        assert last is not None
        logprobs = [lp for out in outs for lp in (out.logprobs or [])] if kwargs.get("logprobs") is not None else None
        return Output(last.request_id, "".join(text), ids, last.finish_reason, last.prompt_tokens,
                      last.completion_tokens, last.error, logprobs)

    def shutdown(self) -> None:
        self.core.shutdown()

    def __enter__(self) -> AsyncEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
