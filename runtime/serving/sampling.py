"""A sequence's next token from one row of logits: logit_bias first, then the grammar's mask (structured output),
then the sequence's sampler; and, when the request asked for them, the log-probabilities OpenAI returns (of the
model's distribution after logit_bias and the mask)."""
from __future__ import annotations

import numpy as np

from .sequence import Sequence, TokenLogprob


def sample_token(seq: Sequence, row: np.ndarray) -> tuple[int, TokenLogprob | None]:
    bias = seq.bias
    if bias is not None:
        row = row.copy()  # the row is the runner's reused buffer
        row[bias[0]] += bias[1]
    constraint = seq.request.constraint
    if constraint is not None:
        row = constraint.mask(row)
    token = seq.sampler(row)
    if constraint is not None:
        constraint.advance(token)
    k = seq.request.logprobs
    return token, (None if k is None else logprob_of(row, token, k))


def logprob_of(row: np.ndarray, token: int, k: int) -> TokenLogprob:
    """log softmax of the row at `token`, and the k largest (ties: lower id first)."""
    row = row.astype(np.float64)
    top = float(row.max())
    lse = top + float(np.log(np.sum(np.exp(row - top))))
    best: list[tuple[int, float]] = []
    if k > 0:
        ids = np.argpartition(-row, k - 1)[:k] if k < row.size else np.arange(row.size)
        ids = sorted(ids.tolist(), key=lambda i: (-row[i], i))
        best = [(int(i), float(row[i]) - lse) for i in ids if np.isfinite(row[i])]
    return TokenLogprob(int(token), float(row[token]) - lse, best)
