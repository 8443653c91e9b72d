"""Next-token sampling in numpy, float32 and vectorized: penalties, greedy, temperature, top-k, top-p, min-p, with a
seeded generator.

Order follows Hugging Face: the penalties change the logits (repetition as transformers' processor: over the
tokens of the prompt and of the output, a logit < 0 is multiplied by the penalty, any other divided; then
presence and frequency as OpenAI defines them, over the generated tokens only: logit -= presence * (count > 0) +
frequency * count), temperature scales them, top-k keeps the k largest (ties with the k-th kept), top-p keeps the
smallest set of most likely tokens whose probability reaches p (up to float32 rounding: a mass within 1e-6 of p
counts as reaching it), then min-p keeps the tokens with probability >= min_p times the largest (transformers
applies it after top-p; the largest is always kept by both, so this is weight >= min_p with the largest weight 1).
Temperature 0 is greedy (argmax of the penalized logits). Every float32 operation is rounded as written, one at
a time: cuda's device sampler (targets/cuda/kernels/sample.cuh) computes the same values.

A `Sampler` draws the tokens of one generation and reuses two vocabulary-sized float32 buffers for every token:
scaling and exp run in place; top-k and top-p find their threshold by partitioning a copy in place and sort at
most 1024 weights; the draw sums blocks of 1024 and accumulates inside one. Per token, nothing of vocabulary size
is allocated but the masks of the cut.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import InputError


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1.0 = off
    seed: int | None = None
    min_p: float = 0.0  # 0 = off
    repetition_penalty: float = 1.0  # 1 = off
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0

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
        if not _is_number(self.min_p) or not 0.0 <= self.min_p <= 1.0:
            raise InputError.about(f"{{min_p}} must be in [0, 1], got {self.min_p!r}")
        if not _is_number(self.repetition_penalty) or not math.isfinite(self.repetition_penalty) or not (
                self.repetition_penalty > 0):
            raise InputError.about(f"{{repetition_penalty}} must be a finite number > 0 (1 turns it off), "
                                   f"got {self.repetition_penalty!r}")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if not _is_number(value) or not math.isfinite(value):
                raise InputError.about(f"{{{name}}} must be a finite number (0 turns it off), got {value!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def penalized(self) -> bool:
        return self.repetition_penalty != 1.0 or self.presence_penalty != 0.0 or self.frequency_penalty != 0.0

    def make_rng(self) -> np.random.Generator:
        return np.random.default_rng(self.seed)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class Sampler:
    """Draws the tokens of one generation from 1-D float logits. With penalties it keeps the generation's history:
    `prompt` (or `reset(prompt)`) gives the prompt's tokens, and every token it draws counts as generated."""

    def __init__(self, params: SamplingParams, rng: np.random.Generator | None = None,
                 prompt: Sequence[int] = ()) -> None:
        self.params = params
        self.rng = rng if rng is not None else params.make_rng()
        self._weights = np.empty(0, dtype=np.float32)  # the scaled logits, then their weights (in place)
        self._scratch = np.empty(0, dtype=np.float32)  # partitioned in place to find the k-th largest value
        self.reset(prompt)

    def reset(self, prompt: Sequence[int] = ()) -> None:
        """A new generation after `prompt`: no token generated yet."""
        self._prompt = {int(t) for t in prompt}
        self._generated: dict[int, int] = {}

    def record(self, token: int) -> None:
        """Count `token` as generated (the sampler does it for the tokens it draws)."""
        self._generated[token] = self._generated.get(token, 0) + 1

    def __call__(self, logits: np.ndarray) -> int:
        if self.params.greedy:
            token = int(np.argmax(self.penalize(logits)))
        else:
            ids, weights = self.distribution(logits)
            pick = draw(weights, self.rng.random())
            token = pick if ids is None else int(ids[pick])
        self.record(token)
        return token

    def _buffers(self, shape: tuple[int, ...]) -> None:
        if self._weights.shape != shape:
            self._weights = np.empty(shape, dtype=np.float32)
            self._scratch = np.empty(shape, dtype=np.float32)

    def penalize(self, logits: np.ndarray) -> np.ndarray:
        """The logits after the penalties (float32, in this sampler's buffer; the input itself when there are none)."""
        params = self.params
        if not params.penalized or not (self._prompt or self._generated):
            return logits
        self._buffers(logits.shape)
        x = self._weights
        np.copyto(x, logits, casting="same_kind")
        if params.repetition_penalty != 1.0:
            seen = np.fromiter(self._prompt.union(self._generated), dtype=np.int64)
            v = x[seen]
            r = np.float32(params.repetition_penalty)
            x[seen] = np.where(v < 0, v * r, v / r)
        if self._generated and (params.presence_penalty != 0.0 or params.frequency_penalty != 0.0):
            gen = np.fromiter(self._generated.keys(), dtype=np.int64, count=len(self._generated))
            counts = np.fromiter(self._generated.values(), dtype=np.float32, count=len(self._generated))
            x[gen] -= np.float32(params.presence_penalty) + np.float32(params.frequency_penalty) * counts
        return x

    def distribution(self, logits: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
        """The tokens a non-greedy draw may pick and their unnormalised float32 weights: (None, one weight per
        vocabulary entry) when nothing is cut, else (token ids, their weights). The weights may be a buffer of
        this sampler: use them before the next call."""
        params = self.params
        self._buffers(logits.shape)
        x = np.divide(self.penalize(logits), np.float32(params.temperature), out=self._weights, casting="same_kind")
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
        if params.min_p > 0.0:  # x is p / p_max here (the largest weight is exp(0) = 1)
            keep = np.flatnonzero(x >= np.float32(params.min_p))
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


def logits_to_probs(logits: np.ndarray, params: SamplingParams, prompt: Sequence[int] = (),
                    generated: Sequence[int] = ()) -> np.ndarray:
    """The float32 distribution a draw picks from after `prompt` and the `generated` tokens, over the whole
    vocabulary (for inspection and tests; `Sampler` never builds it)."""
    probs = np.zeros(logits.shape, dtype=np.float32)
    sampler = Sampler(params, prompt=prompt)
    for token in generated:
        sampler.record(int(token))
    if params.greedy:
        probs[int(np.argmax(sampler.penalize(logits)))] = 1.0
        return probs
    ids, weights = sampler.distribution(logits)
    probs[slice(None) if ids is None else ids] = weights / weights.sum(dtype=np.float64)
    return probs


def sample(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator) -> int:
    """One token id from 1-D logits (a generation loop keeps one `Sampler` instead)."""
    return Sampler(params, rng)(logits)


# The device sampler's parameter row (float32; the integer fields hold int32 bits): `Param` in
# targets/cuda/kernels/sample.cuh, which reads the same positions.
DEVICE_PARAM_FIELDS = ("temperature", "top_k", "top_p", "min_p", "repetition_penalty", "presence_penalty",
                       "frequency_penalty", "seed_lo", "seed_hi", "step", "slot", "flags")
DEVICE_INT_FIELDS = ("top_k", "seed_lo", "seed_hi", "step", "slot", "flags")
DEVICE_PARAMS = len(DEVICE_PARAM_FIELDS)
DEVICE_INFO_FIELDS = ("kept", "top_k_key", "top_p_key")  # what the kernel reports per row, for checks
UPDATE_COUNTS = 1  # flags bit 0: count the sampled token in the penalty table
STEP = DEVICE_PARAM_FIELDS.index("step")
SLOT, FLAGS = DEVICE_PARAM_FIELDS.index("slot"), DEVICE_PARAM_FIELDS.index("flags")
# sample_ext's rows (the server's): these fields after DEVICE_PARAM_FIELDS, int32 bits (`ExtParam` in sample.cuh):
# the word offsets in the step's aux buffer of the row's allowed-token bitmask (-1: none) and of its logit_bias
# pairs, their count, and the log-probabilities asked for (k most likely, -1: none)
DEVICE_EXT_FIELDS = ("mask", "bias", "nbias", "logprobs")
DEVICE_EXT_PARAMS = DEVICE_PARAMS + len(DEVICE_EXT_FIELDS)
DEVICE_TOP_LOGPROBS = 20  # k at most (TOP_LOGPROBS)
DEVICE_LOGPROB_COLS = 1 + 2 * DEVICE_TOP_LOGPROBS  # [the sampled token's, (id bits, logprob) x k]: LOGPROB_COLS


def device_params(params: SamplingParams, seed: int, slot: int, step: int = 0,
                  out: np.ndarray | None = None) -> np.ndarray:
    """One row of the device sampler's parameters (float32 [DEVICE_PARAMS], in `out` when given). The draws of a
    row are a function of (seed, step, token id): a generation bumps `step` (out.view(np.int32)[STEP]) per token."""
    row = np.zeros(DEVICE_PARAMS, np.float32) if out is None else out
    ints = row.view(np.int32)
    seed &= (1 << 64) - 1
    values = {"temperature": params.temperature, "top_p": params.top_p, "min_p": params.min_p,
              "repetition_penalty": params.repetition_penalty, "presence_penalty": params.presence_penalty,
              "frequency_penalty": params.frequency_penalty}
    for i, name in enumerate(DEVICE_PARAM_FIELDS):
        if name in values:
            row[i] = values[name]
    ints[DEVICE_PARAM_FIELDS.index("top_k")] = params.top_k
    ints[DEVICE_PARAM_FIELDS.index("seed_lo")] = np.uint32(seed & 0xFFFFFFFF).view(np.int32)
    ints[DEVICE_PARAM_FIELDS.index("seed_hi")] = np.uint32(seed >> 32).view(np.int32)
    ints[STEP] = step
    ints[DEVICE_PARAM_FIELDS.index("slot")] = slot
    ints[DEVICE_PARAM_FIELDS.index("flags")] = UPDATE_COUNTS
    return row
