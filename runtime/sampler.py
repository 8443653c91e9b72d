"""Next-token sampling in numpy: greedy, temperature, top-k, top-p, with a seeded generator.

Order follows Hugging Face: temperature scales the logits, top-k keeps the k largest (ties with the k-th kept),
top-p keeps the smallest set of most likely tokens whose probability reaches p. Temperature 0 is greedy (argmax).
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


def top_k_mask(logits: np.ndarray, k: int) -> np.ndarray:
    """Logits with everything below the k-th largest set to -inf (k = 0 or k >= vocab: unchanged)."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = np.partition(logits, -k, axis=-1)[..., -k, None]
    return np.where(logits < kth, -np.inf, logits)


def top_p_mask(probs: np.ndarray, p: float) -> np.ndarray:
    """Probabilities (1-D) with the tail outside the top-p nucleus zeroed; the most likely token always stays."""
    if p >= 1.0:
        return probs
    order = _most_likely_first(probs, p)
    before = np.concatenate([[0.0], np.cumsum(probs[order])[:-1]])  # mass of the more likely tokens
    keep = np.zeros(probs.shape, dtype=bool)
    keep[order[before < p]] = True
    keep[order[0]] = True
    return np.where(keep, probs, 0.0)


def _most_likely_first(probs: np.ndarray, p: float, head: int = 1024) -> np.ndarray:
    """Token ids by falling probability, far enough to cover mass p. A full sort of a 128k vocabulary costs ~10 ms
    per token, so sort only the `head` most likely (argpartition is linear) when they already hold mass p."""
    if probs.shape[-1] > head:
        top = np.argpartition(-probs, head)[:head]
        top = top[np.argsort(-probs[top], kind="stable")]
        if probs[top].sum() >= p:
            return top
    return np.argsort(-probs, kind="stable")


def softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x = np.exp(x - np.max(x, axis=-1, keepdims=True))
    return x / np.sum(x, axis=-1, keepdims=True)


def logits_to_probs(logits: np.ndarray, params: SamplingParams) -> np.ndarray:
    """The distribution a non-greedy `sample` draws from (1-D logits in, float64 probabilities out)."""
    if params.greedy:
        probs = np.zeros(logits.shape, dtype=np.float64)
        probs[int(np.argmax(logits))] = 1.0
        return probs
    probs = softmax(top_k_mask(logits.astype(np.float64) / params.temperature, params.top_k))
    probs = top_p_mask(probs, params.top_p)
    return probs / probs.sum()


def sample(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator) -> int:
    """One token id from 1-D logits."""
    if params.greedy:
        return int(np.argmax(logits))
    cdf = np.cumsum(logits_to_probs(logits, params))
    return int(min(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"), len(cdf) - 1))
