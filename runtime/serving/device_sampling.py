"""The serving engine's sampling on the device (cuda artifacts: `sample`, and in newer builds `sample_restore` and
`sample_ext`): per step, one parameter row per sequence goes to the device and only the token ids come back (and
the log-probabilities a request asked for).

Each running sequence sampled on the device holds a penalty slot in [0, max_batch_size) from admission to
retirement or preemption (its row of the device penalty table; reset to its prompt and, after a preemption, its
generated tokens when it is admitted again) and draws with its own seed at step = tokens generated so far, so a
seeded request gives the same tokens whatever it is batched with and however often it is preempted. With
`sample_ext`, logit_bias and the grammar's allowed-token bitmask go in a small per-step `aux` buffer of int32 words
(only the rows that have them), and the kernel applies them before the draw in sample_token's order; the matcher
advances on the returned id here. A sequence whose request needs what the artifact's sampler lacks (an older cuda
build) is sampled on the host from copied logits for its whole life (`device` False), beside device rows.
"""
from __future__ import annotations

import heapq
from collections.abc import Sequence as Seq

import numpy as np

from ..model_runner import ModelRunner, RowSample
from ..sampler import (DEVICE_EXT_FIELDS, DEVICE_EXT_PARAMS, DEVICE_PARAMS, FLAGS, STEP, UPDATE_COUNTS,
                       SamplingParams, device_params)
from .sampling import sample_token
from .sequence import Sequence, TokenLogprob

MASK, BIAS, NBIAS, LOGPROBS = (DEVICE_PARAMS + DEVICE_EXT_FIELDS.index(f) for f in DEVICE_EXT_FIELDS)


class SlotPool:
    """Penalty slots, the lowest free one first."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._free = list(range(size))
        self.held: set[int] = set()

    def take(self) -> int:
        if not self._free:
            raise RuntimeError(f"all {self.size} penalty slots are held")
        slot = heapq.heappop(self._free)
        self.held.add(slot)
        return slot

    def give(self, slot: int) -> None:
        self.held.remove(slot)
        heapq.heappush(self._free, slot)


def pack_bias(bias: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """logit_bias (ids, float32 values) as sample_ext's words: (id, value bits) pairs."""
    ids, values = bias
    words = np.empty(2 * ids.size, np.int32)
    words[0::2] = ids
    words[1::2] = np.ascontiguousarray(values, np.float32).view(np.int32)
    return words


def unpack_logprobs(row: np.ndarray, token: int, k: int) -> TokenLogprob:
    """One row of sample_ext's log-probabilities: [the sampled token's, (id bits, logprob) x TOP]; ids -1 end it."""
    ids = row[1 : 1 + 2 * k : 2].view(np.int32)
    top = [(int(i), float(lp)) for i, lp in zip(ids, row[2 : 2 + 2 * k : 2]) if i >= 0]
    return TokenLogprob(int(token), float(row[0]), top)


class DeviceSampling:
    def __init__(self, runner: ModelRunner) -> None:
        self.runner = runner
        self.ext = runner.has_sample_ext
        self.width = DEVICE_EXT_PARAMS if self.ext else DEVICE_PARAMS
        self.slots = SlotPool(runner.max_batch_size)
        self.words = (runner.vocab_size + 31) // 32
        # each slot's row (the step is set per call); the last row is what host-sampled rows send (greedy, no
        # penalties, counting nothing)
        self.neutral = runner.max_batch_size
        self.table = np.zeros((runner.max_batch_size + 1, self.width), np.float32)
        self._fill(self.neutral, SamplingParams(), 0, 0, counts=False, logprobs=None)
        self._aux = np.zeros(1024, np.int32)
        self._bias_words: dict[int, np.ndarray] = {}  # seq_id -> its logit_bias words
        self._last: tuple[tuple[int, ...], np.ndarray] | None = None  # the last decode's seq ids and sampled ids

    # -- which sequences, and their slots ---------------------------------------------------------------------
    def on_device(self, seq: Sequence) -> bool:
        """Whether this artifact's sampler can sample every token of the sequence's request."""
        req = seq.request
        if (req.constraint is not None or seq.bias is not None or req.logprobs is not None) and not self.ext:
            return False
        return not req.sampling.penalized or self.runner.has_restore

    def admit(self, seq: Sequence) -> None:
        """A sequence starts running (or runs again after a preemption): it takes a slot; with penalties the slot
        is reset to its prompt and the tokens it has generated."""
        if not seq.device or seq.slot is not None:
            return
        slot = self.slots.take()
        seq.slot = slot
        req = seq.request
        self._fill(slot, req.sampling, seq.seed, slot, counts=req.sampling.penalized, logprobs=req.logprobs)
        if seq.bias is not None:
            self._bias_words[seq.seq_id] = pack_bias(seq.bias)
        if req.sampling.penalized:
            self.runner.restore_penalties(slot, req.prompt, seq.tokens[seq.prompt_len :])

    def release(self, seq: Sequence) -> None:
        """The sequence stops running (retired or preempted): its slot is free."""
        self._last = None
        if seq.slot is not None:
            self.slots.give(seq.slot)
            seq.slot = None
        self._bias_words.pop(seq.seq_id, None)

    def invalidate(self, running: Seq[Sequence]) -> None:
        """The engine cleared the KV cache after a failure: penalty counts are rebuilt from the tokens kept."""
        self._last = None
        for seq in running:
            if seq.slot is not None and seq.request.sampling.penalized:
                self.runner.restore_penalties(seq.slot, seq.request.prompt, seq.tokens[seq.prompt_len :])

    def _fill(self, index: int, params: SamplingParams, seed: int, slot: int, counts: bool,
              logprobs: int | None) -> None:
        row = self.table[index]
        device_params(params, seed, slot, 0, out=row[:DEVICE_PARAMS])
        ints = row.view(np.int32)
        ints[FLAGS] = UPDATE_COUNTS if counts else 0  # unpenalized rows read and count nothing in their slot
        if self.ext:
            ints[MASK], ints[BIAS], ints[NBIAS] = -1, 0, 0
            ints[LOGPROBS] = -1 if logprobs is None else logprobs

    # -- a step ---------------------------------------------------------------------------------------------
    def rows(self, seqs: Seq[Sequence]) -> tuple[np.ndarray, np.ndarray | None, bool]:
        """The parameter rows of a batch (each sequence's at its step), the aux words their masks and bias take
        (None: none) and whether any row asks for log-probabilities. Computes the grammars' masks."""
        n = len(seqs)
        index = np.fromiter((s.slot if s.device else self.neutral for s in seqs), np.intp, n)
        rows = self.table[index]
        ints = rows.view(np.int32)
        ints[:, STEP] = np.fromiter((s.generated for s in seqs), np.int32, n)
        if not self.ext:
            return rows, None, False
        used, logprobs = 0, False
        for i, seq in enumerate(seqs):
            if not seq.device:
                continue
            logprobs = logprobs or seq.request.logprobs is not None
            constraint = seq.request.constraint
            if constraint is not None:
                self._reserve(used + self.words)
                constraint.fill_mask(self._aux[used : used + self.words])
                ints[i, MASK] = used
                used += self.words
            words = self._bias_words.get(seq.seq_id)
            if words is not None:
                self._reserve(used + words.size)
                self._aux[used : used + words.size] = words
                ints[i, BIAS], ints[i, NBIAS] = used, words.size // 2
                used += words.size
        return rows, (self._aux[:used] if used else None), logprobs

    def _reserve(self, words: int) -> None:
        if words > self._aux.size:
            grown = np.zeros(1 << (words - 1).bit_length(), np.int32)
            grown[: self._aux.size] = self._aux
            self._aux = grown

    def first(self, seqs: Seq[Sequence], logits: np.ndarray) -> list[tuple[int, TokenLogprob | None]]:
        """The first token of each sequence whose prefill just ended, from its host logits row."""
        self._last = None
        out: list[tuple[int, TokenLogprob | None]] = [(0, None)] * len(seqs)
        on = [i for i, s in enumerate(seqs) if s.device]
        if on:
            chosen = [seqs[i] for i in on]
            rows, aux, logprobs = self.rows(chosen)
            sample = self.runner.sample_rows(logits[on], rows, aux, logprobs)
            for j, i in enumerate(on):
                out[i] = self._result(seqs[i], sample, j)
        for i, seq in enumerate(seqs):
            if not seq.device:
                out[i] = sample_token(seq, logits[i])
        return out

    def decode(self, seqs: Seq[Sequence]) -> list[tuple[int, TokenLogprob | None]]:
        """One decode step of the batch: each row's next token."""
        key = tuple(s.seq_id for s in seqs)
        host = [i for i, s in enumerate(seqs) if not s.device]
        # the ids the last step sampled are on the device still: pass them back when the batch is the same
        tokens = self._last[1] if self._last is not None and self._last[0] == key else [s.tokens[-1] for s in seqs]
        rows, aux, logprobs = self.rows(seqs)
        sample = self.runner.decode_sample_rows(list(key), tokens, rows, aux, logprobs, host_logits=bool(host))
        self._last = None if host else (key, sample.ids)
        out = [self._result(seq, sample, i) if seq.device else (0, None) for i, seq in enumerate(seqs)]
        for i in host:
            out[i] = sample_token(seqs[i], sample.logits[i])
        return out

    def _result(self, seq: Sequence, sample: RowSample, i: int) -> tuple[int, TokenLogprob | None]:
        token = int(sample.ids[i])
        req = seq.request
        if req.constraint is not None:
            req.constraint.advance(token)
        k = req.logprobs
        return token, (None if k is None else unpack_logprobs(sample.logprobs[i], token, k))
