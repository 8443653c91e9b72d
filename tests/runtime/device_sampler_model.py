"""A numpy model of cuda's serving sampler (targets/cuda/kernels/sample.cuh: `prepare`, `logprobs`, `reset`,
`restore`, the penalty table and the parameter rows), and `FakeDeviceSampler`, which puts it in place of the
`sample*` entry points of a cpu ModelRunner, so the serving engine's device path runs on the tiny cpu artifact.

The model follows the kernels step by step where they compute (the bias and mask in place; penalties op by op in
float32; the log-softmax in float64; the top-k by a radix select over 64-bit (logit, reversed id) keys, 11-bit
digits, stopping once the cut bin holds exactly the rest). Its one stand-in is the draw of a non-greedy row: the
host Sampler's distribution of the penalized logits with u from a generator seeded by (seed, step), which keeps
the contract that matters here (draws are a function of the row's seed, step and logits), not the Gumbel noise
(tests/targets/split_sampler_model.py models that).
"""
from __future__ import annotations

import numpy as np

from ember.runtime.sampler import (DEVICE_EXT_FIELDS, DEVICE_LOGPROB_COLS, DEVICE_PARAM_FIELDS, DEVICE_PARAMS,
                                   DEVICE_TOP_LOGPROBS, UPDATE_COUNTS, Sampler, SamplingParams, draw)

PROMPT_FLAG = 1 << 30
COUNT_MASK = PROMPT_FLAG - 1
FIELD = {name: i for i, name in enumerate(DEVICE_PARAM_FIELDS + DEVICE_EXT_FIELDS)}


def float_key(f: np.ndarray) -> np.ndarray:
    b = np.ascontiguousarray(f, np.float32).view(np.uint32).copy()
    b[b == 0x80000000] = 0
    return np.where(b & 0x80000000, ~b, b | 0x80000000).astype(np.uint32)


def field(row: np.ndarray, name: str) -> float | int:
    i = FIELD[name]
    return int(row.view(np.int32)[i]) if name not in ("temperature", "top_p", "min_p", "repetition_penalty",
                                                       "presence_penalty", "frequency_penalty") else float(row[i])


def allowed(words: np.ndarray, vocab: int) -> np.ndarray:
    ids = np.arange(vocab)
    return ((words[ids >> 5].astype(np.uint32) >> (ids & 31).astype(np.uint32)) & 1).astype(bool)


def prepare(logits: np.ndarray, params: np.ndarray, aux: np.ndarray) -> None:
    """sample.cuh prepare, in place on logits [b, vocab]: bias pairs added (float32) to allowed tokens, then every
    token the row's mask does not allow at -inf."""
    vocab = logits.shape[1]
    for r in range(logits.shape[0]):
        mask, bias, nbias = (field(params[r], f) for f in ("mask", "bias", "nbias"))
        ok = allowed(aux[mask : mask + (vocab + 31) // 32], vocab) if mask >= 0 else np.ones(vocab, bool)
        for j in range(nbias):
            token = int(aux[bias + 2 * j])
            if 0 <= token < vocab and ok[token]:
                logits[r, token] = np.float32(logits[r, token] + aux[bias + 2 * j + 1 : bias + 2 * j + 2].view(
                    np.float32)[0])
        logits[r, ~ok] = -np.inf


def penalize(logits: np.ndarray, counts: np.ndarray, row: np.ndarray) -> np.ndarray:
    """sample.cuh penalize over a row (float32 op by op); the logits as they are when the row has no penalties."""
    rep, pres, freq = (np.float32(field(row, f)) for f in ("repetition_penalty", "presence_penalty",
                                                           "frequency_penalty"))
    if rep == 1 and pres == 0 and freq == 0:
        return logits
    out = logits.astype(np.float32).copy()
    seen = counts != 0
    if rep != 1:
        v = out[seen]
        out[seen] = np.where(v < 0, v * rep, v / rep)
    g = (counts & COUNT_MASK).astype(np.float32)
    gen = g != 0
    out[gen] = out[gen] - (pres + freq * g[gen])
    return out


def id_keys(logits: np.ndarray) -> np.ndarray:
    ids = np.arange(logits.size, dtype=np.uint64)
    return (float_key(logits).astype(np.uint64) << np.uint64(32)) | (np.uint64(0xFFFFFFFF) - ids)


def kth_key(keys: np.ndarray, k: int) -> int:
    """sample.cuh logprobs' radix select: the floor key F with exactly k keys >= F."""
    prefix, above, shift = 0, 0, 53
    while True:
        bits = 9 if shift == 0 else 11
        up = shift + bits
        sel = keys if up == 64 else keys[(keys >> np.uint64(up)) == np.uint64(prefix)]
        digits = ((sel >> np.uint64(shift)) & np.uint64((1 << bits) - 1)).astype(np.int64)
        count = np.bincount(digits, minlength=1 << bits)[::-1]  # from the top bin down
        cum = above + np.concatenate([[0], np.cumsum(count)[:-1]])
        top = int(np.flatnonzero((cum < k) & (cum + count >= k))[0])
        found, before, c = (1 << bits) - 1 - top, int(cum[top]), int(count[top])
        prefix = (prefix << bits) | found
        if before + c == k or shift == 0:
            return prefix << shift
        above = before
        shift = max(shift - 11, 0)


def logprob_rows(logits: np.ndarray, params: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """sample.cuh logprobs: [b, DEVICE_LOGPROB_COLS] for the rows that ask (zeros elsewhere)."""
    b, vocab = logits.shape
    out = np.zeros((b, DEVICE_LOGPROB_COLS), np.float32)
    for r in range(b):
        want = field(params[r], "logprobs")
        if want < 0:
            continue
        row = logits[r]
        m = np.float32(np.max(row[~np.isnan(row)]))
        lse = float(m) + float(np.log(np.sum(np.exp(row.astype(np.float64) - float(m)))))
        out[r, 0] = np.float32(float(row[ids[r]]) - lse)
        out[r, 1::2].view(np.int32)[:] = -1
        out[r, 2::2] = 0
        k = min(want, DEVICE_TOP_LOGPROBS, vocab)
        if k == 0:
            continue
        keys = id_keys(row)
        chosen = np.sort(keys[keys >= np.uint64(kth_key(keys, k))])[::-1]
        w = 0
        for key in chosen:
            token = int(np.uint64(0xFFFFFFFF) - (key & np.uint64(0xFFFFFFFF)))
            if np.isfinite(row[token]):
                out[r, 1 + 2 * w : 2 + 2 * w].view(np.int32)[0] = token
                out[r, 2 + 2 * w] = np.float32(float(row[token]) - lse)
                w += 1
    return out


def draw_row(logits: np.ndarray, counts: np.ndarray | None, row: np.ndarray) -> int:
    x = penalize(logits, counts, row) if counts is not None else logits
    t = field(row, "temperature")
    if not t > 0:
        return int(np.argmax(x))
    params = SamplingParams(temperature=t, top_k=field(row, "top_k"), top_p=field(row, "top_p"),
                            min_p=field(row, "min_p"))
    seed = (field(row, "seed_lo") & 0xFFFFFFFF) | ((field(row, "seed_hi") & 0xFFFFFFFF) << 32)
    sampler = Sampler(params, rng=np.random.default_rng([seed, field(row, "step")]))
    ids, weights = sampler.distribution(x)
    pick = draw(weights, sampler.rng.random())
    return pick if ids is None else int(ids[pick])


class FakeDeviceSampler:
    """The runner's sample / sample_reset / sample_restore / sample_ext on TVM cpu tensors, recording each call:
    `calls` holds ("sample", params rows), ("reset", slot, prompt), ("restore", slot, n_prompt, tokens),
    ("ext", params rows, aux words)."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def install(self, runner, ext: bool = True, restore: bool = True) -> FakeDeviceSampler:
        runner._sample, runner._sample_reset = self.sample, self.reset
        runner._sample_restore = self.restore if restore else None
        runner._sample_ext = self.sample_ext if ext else None
        return self

    def _draw(self, logits, params: np.ndarray, counts, ids) -> np.ndarray:
        table = counts.numpy()
        x = logits.numpy()[:, 0, :]
        out = np.empty(params.shape[0], np.int32)
        for r, row in enumerate(params):
            slot = field(row, "slot")
            out[r] = draw_row(x[r], table[slot], row)
            if field(row, "flags") & UPDATE_COUNTS:
                table[slot, out[r]] += 1
        counts.copyfrom(table)
        ids.copyfrom(out)
        return out

    def sample(self, logits, params, counts, ids, info):
        rows = params.numpy()
        assert rows.shape[1] == DEVICE_PARAMS
        self.calls.append(("sample", rows.copy()))
        self._draw(logits, rows, counts, ids)
        return ids, info

    def sample_ext(self, logits, params, counts, aux, ids, info, lp):
        rows, words = params.numpy(), aux.numpy()
        self.calls.append(("ext", rows.copy(), words.copy()))
        x = logits.numpy()
        prepare(x[:, 0, :], rows, words)
        logits.copyfrom(x)
        picked = self._draw(logits, rows, counts, ids)
        lp.copyfrom(logprob_rows(x[:, 0, :], rows, picked))
        return ids, info, lp

    def reset(self, counts, prompt, slot):
        s, ids = int(slot.numpy()[0]), prompt.numpy()
        self.calls.append(("reset", s, ids.tolist()))
        table = counts.numpy()
        table[s] = 0
        table[s, ids] = PROMPT_FLAG
        counts.copyfrom(table)
        return counts

    def restore(self, counts, tokens, meta):
        (s, n_prompt), ids = meta.numpy().tolist(), tokens.numpy()
        self.calls.append(("restore", s, n_prompt, ids.tolist()))
        table = counts.numpy()
        table[s] = 0
        table[s, ids[:n_prompt]] = PROMPT_FLAG
        np.add.at(table[s], ids[n_prompt:], 1)
        counts.copyfrom(table)
        return counts
