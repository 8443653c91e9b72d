"""Next-token sampling in numpy, float32 and vectorized: greedy, temperature, top-k, top-p, with a seeded generator.

Order follows Hugging Face: temperature scales the logits, top-k keeps the k largest (ties with the k-th kept),
top-p keeps the smallest set of most likely tokens whose probability reaches p (up to float32 rounding: a mass
within 1e-6 of p counts as reaching it). Temperature 0 is greedy (argmax).

A `Sampler` draws the tokens of one generation and reuses two vocabulary-sized float32 buffers for every token:
scaling and exp run in place; top-k and top-p find their threshold by partitioning a copy in place and sort at
most 1024 weights; the draw sums blocks of 1024 and accumulates inside one. Per token, nothing of vocabulary size
is allocated but the masks of the cut.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import InputError


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1.0 = off
    seed: int | None = None

    def __post_init__(self) -> None:
        # Errors name the argument: `temperature` from Python, `--temperature` on the command line.
        if not _is_number(self.temperature) or not math.isfinite(self.temperature) or self.temperature < 0:
            raise InputError.about(f"{{temperature}} must be a finite number >= 0, got {self.temperature!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise InputError.about(f"{{top_k}} must be an integer >= 0 (0 turns it off), got {self.top_k!r}")
        if not _is_number(self.top_p) or not 0.0 < self.top_p <= 1.0:
            raise InputError.about(f"{{top_p}} must be in (0, 1], got {self.top_p!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0):
            raise InputError.about(f"{{seed}} must be an integer >= 0, got {self.seed!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def make_rng(self) -> np.random.Generator:
        return np.random.default_rng(self.seed)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class Sampler:
    """Draws the tokens of one generation from 1-D float logits."""

    def __init__(self, params: SamplingParams, rng: np.random.Generator | None = None) -> None:
        self.params = params
        self.rng = rng if rng is not None else params.make_rng()
        self._weights = np.empty(0, dtype=np.float32)  # the scaled logits, then their weights (in place)
        self._scratch = np.empty(0, dtype=np.float32)  # partitioned in place to find the k-th largest value

    def __call__(self, logits: np.ndarray) -> int:
        if self.params.greedy:
            return int(np.argmax(logits))
        ids, weights = self.distribution(logits)
        pick = draw(weights, self.rng.random())
        return pick if ids is None else int(ids[pick])

    def distribution(self, logits: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
        """The tokens a non-greedy draw may pick and their unnormalised float32 weights: (None, one weight per
        vocabulary entry) when nothing is cut, else (token ids, their weights). The weights may be a buffer of
        this sampler: use them before the next call."""
        params = self.params
        if self._weights.shape != logits.shape:
            self._weights = np.empty(logits.shape, dtype=np.float32)
            self._scratch = np.empty(logits.shape, dtype=np.float32)
        x = np.divide(logits, params.temperature, out=self._weights, casting="same_kind")
        ids: np.ndarray | None = None
        if 0 < params.top_k < x.size:
            ids = top_k_ids(x, params.top_k, self._scratch)
            x = x[ids]
        x -= x.max()
        np.exp(x, out=x)
        if params.top_p < 1.0:
            keep = nucleus(x, params.top_p, self._scratch[: x.size])
            ids = keep if ids is None else ids[keep]
            x = x[keep]
        return ids, x


def draw(weights: np.ndarray, u: float, block: int = 1024) -> int:
    """Inverse CDF: the index where the cumulative weight passes u * total. Sums blocks first, then accumulates
    (in float64) inside the one block holding the point, instead of a cumulative sum over the whole vocabulary."""
    sums = np.add.reduceat(weights, np.arange(0, weights.size, block)) if weights.size > block else None
    base, start = 0.0, 0
    if sums is not None:
        edges = np.cumsum(sums, dtype=np.float64)
        target = u * edges[-1]
        b = min(int(np.searchsorted(edges, target, side="right")), edges.size - 1)
        base, start = (float(edges[b - 1]) if b else 0.0), b * block
        inner = np.cumsum(weights[start : start + block], dtype=np.float64)
    else:
        inner = np.cumsum(weights, dtype=np.float64)
        target = u * inner[-1]
    return start + min(int(np.searchsorted(inner, target - base, side="right")), inner.size - 1)


def kth_largest(x: np.ndarray, k: int, scratch: np.ndarray | None = None) -> float:
    """The k-th largest value of x, partitioning a copy (in `scratch` when given: no allocation)."""
    if scratch is None:
        scratch = np.empty(x.shape, dtype=x.dtype)
    np.copyto(scratch, x, casting="same_kind")
    scratch.partition(x.size - k)
    return scratch[x.size - k]


def top_k_ids(x: np.ndarray, k: int, scratch: np.ndarray | None = None) -> np.ndarray:
    """Ids (ascending) of the k largest values, with every tie of the k-th (as HF does)."""
    return np.flatnonzero(x >= kth_largest(x, k, scratch))


def nucleus(weights: np.ndarray, p: float, scratch: np.ndarray | None = None, head: int = 1024) -> np.ndarray:
    """Ids (ascending) of the smallest set of largest weights holding mass p; among equal weights the lower id
    goes first. A copy of the weights is partitioned in place, at the 1024th largest first (the nucleus is usually
    above it), cutting deeper when it is not, until the slice holding the cut is short enough to sort."""
    n = weights.size
    total = float(np.sum(weights))  # pairwise summation: float32 is accurate enough here
    need = p * total * (1.0 - 1e-6)  # a mass within float32 rounding of p reaches it
    if not need > 0:
        return np.array([int(np.argmax(weights))])
    buf = np.empty(n, np.float32) if scratch is None else scratch[:n]
    np.copyto(buf, weights, casting="same_kind")
    lo, hi, have, rank = 0, n, 0.0, head  # buf[hi:] is in the nucleus (mass `have`); the cut lies in buf[lo:hi]
    while hi - lo > head:
        seg, m = buf[lo:hi], hi - lo
        r = min(rank, m // 2)
        seg.partition(m - r)  # in place: seg[m - r:] now holds the r largest of the slice
        top = float(np.sum(seg[m - r :]))
        if have + top >= need:
            lo, rank = lo + m - r, head  # the cut lies among these r
        else:
            have, hi, rank = have + top, lo + m - r, rank * 8  # all r are in; cut deeper below them
    vals = np.sort(buf[lo:hi])[::-1]
    before = have + np.cumsum(vals, dtype=np.float64) - vals
    count = max(1, int(np.count_nonzero(before < need)))
    cut = vals[count - 1]  # the smallest kept weight: keep all above it, and enough of the ties at it
    ties = int(np.count_nonzero(vals[:count] == cut)) + int(np.count_nonzero(buf[hi:] == cut))
    keep = weights > cut
    keep[np.flatnonzero(weights == cut)[:ties]] = True
    return np.flatnonzero(keep)


def top_k_mask(logits: np.ndarray, k: int) -> np.ndarray:
    """Logits with everything below the k-th largest set to -inf (k = 0 or k >= vocab: unchanged)."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    out = np.full(logits.shape, -np.inf, dtype=logits.dtype)
    ids = top_k_ids(logits, k)
    out[ids] = logits[ids]
    return out


def top_p_mask(probs: np.ndarray, p: float) -> np.ndarray:
    """Probabilities (1-D) with the tail outside the top-p nucleus zeroed; the most likely token always stays."""
    if p >= 1.0:
        return probs
    keep = nucleus(np.asarray(probs, dtype=np.float32), p)
    out = np.zeros_like(probs)
    out[keep] = probs[keep]
    return out


def logits_to_probs(logits: np.ndarray, params: SamplingParams) -> np.ndarray:
    """The float32 distribution a non-greedy draw picks from, over the whole vocabulary (for inspection and tests;
    `Sampler` never builds it)."""
    probs = np.zeros(logits.shape, dtype=np.float32)
    if params.greedy:
        probs[int(np.argmax(logits))] = 1.0
        return probs
    ids, weights = Sampler(params).distribution(logits)
    probs[slice(None) if ids is None else ids] = weights / weights.sum(dtype=np.float64)
    return probs


def sample(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator) -> int:
    """One token id from 1-D logits (a generation loop keeps one `Sampler` instead)."""
    return Sampler(params, rng)(logits)
