"""A sequence's next token from one row of logits: logit_bias first, then the grammar's mask (structured output),
then the sequence's sampler; and, when the request asked for them, the log-probabilities OpenAI returns (of the
model's distribution after logit_bias and the mask). `HostSampling` is the engine's sampling on the host: every
step's logits come to the host and each row is sampled here (cpu artifacts, `ember serve --host-sampling`, and
the reference device_sampling.py is checked against)."""
from __future__ import annotations

from collections.abc import Sequence as Seq
from typing import Any

import numpy as np

from .sequence import Sequence, TokenLogprob


def sample_token(seq: Sequence, row: np.ndarray) -> tuple[int, TokenLogprob | None]:
    row = adjusted_row(seq, row)
    constraint = seq.request.constraint
    token = seq.sampler(row)
    if constraint is not None:
        constraint.advance(token)
    k = seq.request.logprobs
    return token, (None if k is None else logprob_of(row, token, k))


def adjusted_row(seq: Sequence, row: np.ndarray) -> np.ndarray:
    """The logits a sequence samples from: logit_bias added (float32), then the grammar's disallowed tokens at
    -inf. A copy when anything changes (the row is the runner's reused buffer)."""
    bias = seq.bias
    if bias is not None:
        row = row.copy()
        row[bias[0]] += bias[1]
    constraint = seq.request.constraint
    if constraint is not None:
        row = constraint.mask(row)
    return row


def logprob_of(row: np.ndarray, token: int, k: int) -> TokenLogprob:
    """log softmax of the row at `token`, and the k largest (ties: lower id first)."""
    row = row.astype(np.float64)
    top = float(row.max())
    lse = top + float(np.log(np.sum(np.exp(row - top))))
    best: list[tuple[int, float]] = []
    if k > 0:
        if k < row.size:  # the k-th largest value; of the ties at it, the lowest ids (argpartition picks any)
            cut = np.partition(row, row.size - k)[row.size - k]
            above = np.flatnonzero(row > cut)
            ids = np.concatenate([above, np.flatnonzero(row == cut)[: k - above.size]])
        else:
            ids = np.arange(row.size)
        ids = sorted(ids.tolist(), key=lambda i: (-row[i], i))
        best = [(int(i), float(row[i]) - lse) for i in ids if np.isfinite(row[i])]
    return TokenLogprob(int(token), float(row[token]) - lse, best)


class HostSampling:
    """The engine's sampling strategy on the host (device_sampling.DeviceSampling has the same methods)."""

    def __init__(self, runner: Any) -> None:
        self.runner = runner

    def on_device(self, seq: Sequence) -> bool:
        return False

    def admit(self, seq: Sequence) -> None:
        pass

    def release(self, seq: Sequence) -> None:
        pass

    def invalidate(self, running: Seq[Sequence]) -> None:
        pass

    def first(self, seqs: Seq[Sequence], logits: np.ndarray) -> list[tuple[int, TokenLogprob | None]]:
        return [sample_token(seq, logits[i]) for i, seq in enumerate(seqs)]

    def decode(self, seqs: Seq[Sequence]) -> list[tuple[int, TokenLogprob | None]]:
        logits = self.runner.decode([s.seq_id for s in seqs], [s.tokens[-1] for s in seqs], reuse=True)
        return [sample_token(seq, row) for seq, row in zip(seqs, logits)]
