"""One generation in flight: its tokens, its sampler, and the text it has streamed so far (stop strings held back).

The KV cache holds `computed` of `tokens` (prompt + generated). A step feeds `tokens[computed:]` (a prefill chunk,
or the last token when only one is left: a decode), so a preempted sequence is recomputed by prefilling again.
"""
from __future__ import annotations

import secrets
import time

import numpy as np
from collections.abc import Callable, Mapping, Sequence as Seq
from dataclasses import dataclass, field
from typing import Any

from ..sampler import Sampler, SamplingParams
from ..tokenizer import StreamDecoder, Tokenizer

WAITING, RUNNING, FINISHED = "waiting", "running", "finished"


@dataclass
class Output:
    """What one step adds to a request's stream. `finish_reason` is set on the last one: "stop" (EOS or a stop
    string), "length" (max_tokens or the context), "abort" or "error" (then `error` says why)."""
    request_id: str
    text: str
    token_ids: list[int]
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None
    logprobs: list[TokenLogprob] | None = None  # one per id in token_ids, when the request asked for them


@dataclass
class TokenLogprob:
    """A sampled token's log-probability under the model (after logit_bias, before temperature and the cuts),
    and the `top` most likely tokens' (id, log-probability), most likely first."""
    token_id: int
    logprob: float
    top: list[tuple[int, float]]


@dataclass
class Request:
    request_id: str
    prompt: list[int]
    max_tokens: int
    sampling: SamplingParams = field(default_factory=SamplingParams)
    stop: Seq[str] = ()
    stop_token_ids: Seq[int] = ()
    logprobs: int | None = None  # None: none; k >= 0: each token's log-probability and the k most likely
    logit_bias: Mapping[int, float] | None = None  # added to the logits before sampling
    follows: str | None = None  # a request with the same prompt (n > 1): start from its pages once it is prefilled
    constraint: Any = None  # grammar.Constraint: structured output
    ignore_eos: bool = False  # generate max_tokens whatever the model says (benchmarks)


class Sequence:
    def __init__(self, seq_id: int, request: Request, tokenizer: Tokenizer | None, eos: Seq[int],
                 context_length: int, sink: Callable[[Output], None]) -> None:
        self.seq_id = seq_id
        self.request = request
        self.tokens = list(request.prompt)
        self.prompt_len = len(request.prompt)
        self.computed = 0
        self.state = WAITING
        self.sampler = Sampler(request.sampling, prompt=request.prompt)  # on the host
        # on the device (device_sampling.py): draws are a function of (seed, step, token); a penalty slot while running
        self.seed = request.sampling.seed if request.sampling.seed is not None else secrets.randbits(63)
        self.device = False
        self.slot: int | None = None
        self.stops = (set() if request.ignore_eos else set(eos)) | set(request.stop_token_ids)
        self.stop_strings = [s for s in request.stop if s]
        self.context_length = context_length
        self.detok: StreamDecoder | None = tokenizer.stream_decoder() if tokenizer is not None else None
        self.text = ""
        self.sent = 0  # text[:sent] has been streamed
        self.sink = sink
        self.arrival = time.perf_counter()
        self.first_token_at: float | None = None
        self.finish_reason: str | None = None
        self._logprobs: list[TokenLogprob] | None = [] if request.logprobs is not None else None
        self.bias = None  # logit_bias as (ids, values) arrays
        if request.logit_bias:
            self.bias = (np.fromiter(request.logit_bias.keys(), np.int64), np.fromiter(request.logit_bias.values(),
                                                                                     np.float32))
        self.leader: Sequence | None = None  # the sequence of request.follows, when it was in flight
        self.final: Output | None = None  # the last output: the engine sends it once the pages are free

    @property
    def generated(self) -> int:
        return len(self.tokens) - self.prompt_len

    @property
    def remaining(self) -> int:
        """Tokens still to feed before the next sample."""
        return len(self.tokens) - self.computed

    def add_token(self, token: int, logprob: TokenLogprob | None = None) -> None:
        """A sampled token: record it, stream what text is final, finish on EOS / stop string / length."""
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        if token in self.stops:  # the text so far is whole: bytes of an unfinished character come out too
            if self.detok is not None:
                self.text += self.detok.flush()
            self._finish("stop", [])
            return
        self.tokens.append(token)
        if self._logprobs is not None and logprob is not None:
            self._logprobs.append(logprob)
        if self.detok is not None:
            self.text += self.detok.push(token)
        if self.stop_strings and (cut := self._find_stop()) is not None:
            self.text = self.text[:cut]
            self._finish("stop", [token])
            return
        if self.generated >= self.request.max_tokens or len(self.tokens) >= self.context_length:
            if self.detok is not None:
                self.text += self.detok.flush()
            self._finish("length", [token])
            return
        safe = len(self.text) - self._held_back()
        self._emit(self.text[self.sent : safe], [token], None)
        self.sent = max(self.sent, safe)

    def grammar_done(self) -> None:
        """The grammar allows nothing more: the output is complete."""
        if self.finish_reason is None:
            if self.detok is not None:
                self.text += self.detok.flush()
            self._finish("stop", [])

    def abort(self, reason: str = "abort", error: str | None = None) -> None:
        if self.finish_reason is None:
            self.finish_reason = reason
            self.state = FINISHED
            self._emit("", [], reason, error)

    def _finish(self, reason: str, ids: list[int]) -> None:
        self.finish_reason = reason
        self.state = FINISHED
        self._emit(self.text[self.sent :], ids, reason)
        self.sent = len(self.text)

    def _emit(self, text: str, ids: list[int], reason: str | None, error: str | None = None) -> None:
        logprobs = None
        if self._logprobs is not None:
            logprobs, self._logprobs = self._logprobs, []
        out = Output(self.request.request_id, text, ids, reason, self.prompt_len, self.generated, error, logprobs)
        if reason is None:
            self.sink(out)
        else:
            self.final = out

    def _find_stop(self) -> int | None:
        """Where the earliest stop string starts in the unsent text (and the few characters before it)."""
        start = max(0, self.sent - max(map(len, self.stop_strings)) + 1)
        hits = [i for s in self.stop_strings if (i := self.text.find(s, start)) >= 0]
        return min(hits) if hits else None

    def _held_back(self) -> int:
        """Length of the longest end of the text that could still grow into a stop string."""
        best = 0
        for s in self.stop_strings:
            for n in range(min(len(s) - 1, len(self.text)), best, -1):
                if self.text.endswith(s[:n]):
                    best = n
                    break
        return best
