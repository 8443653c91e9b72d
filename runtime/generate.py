"""Text generation for one sequence, read top to bottom: sample -> prefill -> decode_one -> generate.

Artifacts with the device sampler (cuda builds) sample on the device: a decode step returns the token id and
the logits never reach the host (`DeviceSampler`); other artifacts sample the host logits with `Sampler`.

Timings: TTFT is prompt-in to first-token-out (prefill + first sample). Decode speed is (N - 1) / (T_N - T_1):
the tokens after the first, over the time from the first token to the last, so prefill never leaks into it.
"""
from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from ..errors import InputError
from .model_runner import ModelRunner
from .sampler import Sampler, SamplingParams
from .tokenizer import StreamDecoder, Tokenizer

RANDOM_WEIGHTS_NOTE = "random weights (benchmark build)"
SEQ_ID = 0


@dataclass
class GenerationResult:
    token_ids: list[int]  # generated tokens only; a stop (EOS) token is not included
    text: str
    prompt_tokens: int
    finish_reason: str  # "stop" (an EOS token) | "length" (max_tokens)
    ttft_s: float
    prefill_tokens_per_s: float
    decode_tokens_per_s: float | None  # None with fewer than 2 generated tokens
    random_weights: bool = False
    timestamps_s: list[float] = field(default_factory=list, repr=False)  # T_i of each sampled token

    def summary(self) -> str:
        decode = "n/a" if self.decode_tokens_per_s is None else f"{self.decode_tokens_per_s:.1f} tok/s"
        line = (
            f"{self.prompt_tokens} prompt + {len(self.token_ids)} generated tokens ({self.finish_reason}); "
            f"TTFT {self.ttft_s * 1e3:.1f} ms; prefill {self.prefill_tokens_per_s:.1f} tok/s; decode {decode}"
        )
        return f"{line}; {RANDOM_WEIGHTS_NOTE}" if self.random_weights else line

    def to_dict(self) -> dict:
        out = asdict(self)
        del out["timestamps_s"]
        if self.random_weights:
            out["note"] = RANDOM_WEIGHTS_NOTE
        return out


def check_max_tokens(max_tokens: object) -> None:
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise InputError.about(f"{{max_tokens}} must be an integer >= 1, got {max_tokens!r}")


def prefill(runner: ModelRunner, prompt: np.ndarray) -> np.ndarray:
    """Prompt into the cache; logits of its last token."""
    return runner.prefill([SEQ_ID], [prompt])[0]


def decode_one(runner: ModelRunner, token: np.ndarray) -> np.ndarray:
    """One token (int32 [1]) into the cache; logits of the next (in a buffer the next call reuses)."""
    return runner.decode([SEQ_ID], token, reuse=True)[0]


class HostSampler:
    """Host logits, sampled in numpy."""

    def __init__(self, runner: ModelRunner, sampling: SamplingParams, prompt: np.ndarray) -> None:
        self.runner, self.sampler = runner, Sampler(sampling, prompt=prompt.tolist())
        self.token = np.zeros(1, np.int32)  # the decode input, reused: no list or array made per token

    def first(self, logits: np.ndarray) -> int:
        return self.sampler(logits)

    def next(self, token: int) -> int:
        self.token[0] = token
        return self.sampler(decode_one(self.runner, self.token))


class DeviceSampler:
    """Sampling on the device: the penalty table's slot is reset with the prompt, then every decode returns the id.
    An unseeded generation draws its seed from the OS."""

    def __init__(self, runner: ModelRunner, sampling: SamplingParams, prompt: np.ndarray) -> None:
        seed = sampling.seed if sampling.seed is not None else secrets.randbits(63)
        self.runner = runner
        runner.reset_penalties(SEQ_ID, prompt)
        self.buf = runner.set_sampling([(sampling, seed, SEQ_ID)])
        self.seq = [SEQ_ID]

    def first(self, logits: np.ndarray) -> int:
        return self.runner.sample_logits(logits, self.buf)

    def next(self, token: int) -> int:
        # the token the last sample wrote is on the device already: passing buf.ids lets decode read it there
        tokens = self.buf.ids if token == self.buf.ids[0] else [token]
        return int(self.runner.decode_sample(self.seq, tokens, self.buf)[0])


def generate(
    runner: ModelRunner,
    prompt: Sequence[int],
    *,
    max_tokens: int,
    sampling: SamplingParams,
    eos_token_ids: Sequence[int] = (),
    tokenizer: Tokenizer | None = None,
    stream: Callable[[str], None] | None = None,
    random_weights: bool = False,
) -> GenerationResult:
    """Generate up to max_tokens tokens after `prompt`, stopping at any EOS id. `stream` gets text as it forms."""
    check_max_tokens(max_tokens)
    ids = runner.check_tokens(prompt, what="prompt token")
    if ids.size == 0:
        raise InputError("the prompt is empty")
    runner.check_budget(ids.size, max_tokens)
    stops = set(eos_token_ids)
    detok: StreamDecoder | None = tokenizer.stream_decoder() if tokenizer is not None else None

    runner.reset()
    runner.add_sequence(SEQ_ID)
    try:
        sampler = (DeviceSampler if runner.has_device_sampler else HostSampler)(runner, sampling, ids)
        t0 = time.perf_counter()
        logits = prefill(runner, ids)
        t_prefill = time.perf_counter() - t0
        tokens: list[int] = []
        stamps: list[float] = []
        finish = "length"
        token = sampler.first(logits)
        while True:
            stamps.append(time.perf_counter() - t0)
            if token in stops:
                finish = "stop"
                break
            tokens.append(token)
            if detok is not None and stream is not None:
                if piece := detok.push(token):
                    stream(piece)
            if len(tokens) == max_tokens:
                break
            token = sampler.next(token)
    finally:
        runner.remove_sequence(SEQ_ID)
    if detok is not None and stream is not None and (tail := detok.flush()):
        stream(tail)

    n = len(stamps)
    return GenerationResult(
        token_ids=tokens,
        text=tokenizer.decode(tokens) if tokenizer is not None else "",
        prompt_tokens=int(ids.size),
        finish_reason=finish,
        ttft_s=stamps[0],
        prefill_tokens_per_s=ids.size / t_prefill if t_prefill > 0 else float("inf"),
        decode_tokens_per_s=(n - 1) / (stamps[-1] - stamps[0]) if n > 1 and stamps[-1] > stamps[0] else None,
        random_weights=random_weights,
        timestamps_s=stamps,
    )
