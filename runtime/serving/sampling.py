"""A sequence's next token from one row of logits: logit_bias first, then the sequence's sampler; and, when the
request asked for them, the log-probabilities OpenAI returns (of the model's distribution after logit_bias)."""
from __future__ import annotations

import numpy as np

from .sequence import Sequence, TokenLogprob


def sample_token(seq: Sequence, row: np.ndarray) -> tuple[int, TokenLogprob | None]:
    bias = seq.bias
    if bias is not None:
        row = row.copy()  # the row is the runner's reused buffer
        row[bias[0]] += bias[1]
    token = seq.sampler(row)
    k = seq.request.logprobs
    return token, (None if k is None else logprob_of(row, token, k))


def logprob_of(row: np.ndarray, token: int, k: int) -> TokenLogprob:
    """log softmax of the row at `token`, and the k largest (ties: lower id first)."""
    top = float(row.max())
    lse = top + float(np.log(np.sum(np.exp(row.astype(np.float64) - top))))
    best: list[tuple[int, float]] = []
    if k > 0:
        ids = np.argpartition(-row, k - 1)[:k] if k < row.size else np.arange(row.size)
        ids = sorted(ids.tolist(), key=lambda i: (-row[i], i))
        best = [(int(i), float(row[i]) - lse) for i in ids]
    return TokenLogprob(int(token), float(row[token]) - lse, best)
