"""The compiled model behind a narrow API: ragged chunked prefill and batched decode, returning float32 logits,
or (artifacts with the device sampler, `sample` in the manifest: cuda builds) sampled token ids.

Token ids are checked against the vocabulary before any call (the compiled `take` does no bounds check and an
out-of-range id can crash the process), and sequence lengths against the context length.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import InputError
from .kv_cache import KVCache
from .loader import LoadedArtifact
from .sampler import (DEVICE_EXT_PARAMS, DEVICE_INFO_FIELDS, DEVICE_LOGPROB_COLS, DEVICE_PARAMS, SLOT, STEP,
                      SamplingParams, device_params)
from .tvm_import import import_tvm

# Cap on one prefill's logits when every position is returned (score): 64 Mi floats = 256 MiB.
MAX_LOGITS_ELEMENTS = 1 << 26


DEFAULT_CONTEXT_CAP = 8192  # KV cache tokens per sequence unless Engine.load(context_length=...) asks for more


class ModelRunner:
    def __init__(
        self,
        artifact: LoadedArtifact,
        *,
        max_batch_size: int = 1,
        context_length: int | None = None,
        prefill_chunk_size: int | None = None,
        kv_tokens: int | None = None,
    ) -> None:
        """`kv_tokens`: tokens the KV cache holds over all sequences (rounded up to whole pages); by default enough
        for max_batch_size sequences of context_length each. A server sizes it smaller and schedules the pages."""
        m = artifact.manifest
        if context_length is None:  # the model's full context can be huge (131072 for Llama 3.1)
            context_length = min(m.context_length, DEFAULT_CONTEXT_CAP)
        if not 1 <= context_length <= m.context_length:
            raise InputError(f"context length {context_length} must be in [1, {m.context_length}] for {m.name}")
        if max_batch_size < 1:
            raise InputError(f"max_batch_size must be at least 1, got {max_batch_size}")
        self.artifact = artifact
        self.name = m.name
        self.vocab_size = m.vocab_size
        self.context_length = context_length
        self.prefill_chunk_size = min(prefill_chunk_size or 2048, context_length)
        self._tvm = import_tvm()
        self._vm = artifact.vm
        self._params = artifact.params
        self._dev = artifact.device
        self._prefill = self._vm["prefill"]
        self._decode = self._vm["decode"]
        self._decode1 = self._vm["decode1"] if "decode1" in m.functions else None
        self._decode_io: dict[int, DecodeBuffers] = {}  # see _decode_buffers
        self._sample = self._vm["sample"] if "sample" in m.functions else None
        self._sample_reset = self._vm["sample_reset"] if "sample_reset" in m.functions else None
        self._sample_io: dict[int, SampleBuffers] = {}  # see sample_buffers
        self._sample_restore = self._vm["sample_restore"] if "sample_restore" in m.functions else None
        self._sample_ext = self._vm["sample_ext"] if "sample_ext" in m.functions else None
        self._rows_io: dict[tuple[str, int, int], RowBuffers] = {}  # see _row_buffers
        self._aux: AuxBuffer | None = None  # the server's per-step mask / bias words (sample_ext)
        self._first_logits: Any = None  # float32 [n, 1, vocab] on the device: prefill logits to sample (capacity n)
        self._counts: Any = None  # int32 [max_batch_size, vocab] on the device: the penalty table, one slot a row
        self._prefill_logits: Any = None  # float32 [1, 1, vocab] on the device: a prefill's last logits, to sample
        self.max_batch_size = max_batch_size
        page = m.kv_cache.page_size
        # whole pages per sequence: each one can reach context_length however the others fill their pages
        full = -(-context_length // page) * page * max_batch_size
        if kv_tokens is not None and not 1 <= kv_tokens:
            raise InputError(f"kv_tokens must be at least 1, got {kv_tokens}")
        self.kv = KVCache(
            self._vm,
            max_batch_size=max_batch_size,
            max_total_seq_len=full if kv_tokens is None else -(-kv_tokens // page) * page,
            prefill_chunk_size=self.prefill_chunk_size,
            page_size=m.kv_cache.page_size,
            sliding_window=m.kv_cache.sliding_window,
            window_in_kernels=m.kv_cache.window_in_kernels,
        )

    # -- checks ---------------------------------------------------------------------------------------------
    def check_tokens(self, tokens: Sequence[int], what: str = "token") -> np.ndarray:
        ids = np.asarray(tokens)
        if ids.ndim != 1 or not (ids.size == 0 or np.issubdtype(ids.dtype, np.integer)):
            raise InputError(f"{what} ids must be a flat list of integers")
        bad = np.flatnonzero((ids < 0) | (ids >= self.vocab_size))
        if bad.size:
            i = int(bad[0])
            raise InputError(
                f"{what} id {int(ids[i])} at position {i} is outside the vocabulary [0, {self.vocab_size})"
            )
        return ids.astype(np.int32)

    def check_budget(self, prompt_tokens: int, max_new_tokens: int) -> None:
        if prompt_tokens + max_new_tokens > self.context_length:
            raise InputError(
                f"prompt of {prompt_tokens} tokens + {max_new_tokens} new tokens exceeds the context length "
                f"{self.context_length} of {self.name}"
            )

    def _check_growth(self, seq_id: int, new: int) -> None:
        total = self.kv.sequence_length(seq_id) + new
        if total > self.context_length:
            raise InputError(f"sequence {seq_id} would hold {total} tokens, more than the context length "
                             f"{self.context_length} of {self.name}")  # fmt: skip

    # -- sequences ------------------------------------------------------------------------------------------
    def add_sequence(self, seq_id: int) -> None:
        self.kv.add_sequence(seq_id)

    def remove_sequence(self, seq_id: int) -> None:
        self.kv.remove_sequence(seq_id)

    def fork_sequence(self, parent: int, child: int) -> None:
        self.kv.fork_sequence(parent, child)

    def reset(self) -> None:
        self.kv.clear()

    # -- model calls ----------------------------------------------------------------------------------------
    def prefill(
        self, seq_ids: Sequence[int], token_lists: Sequence[Sequence[int]], all_logits: bool = False
    ) -> np.ndarray:
        """Append tokens to sequences already in the cache (a ragged batch, split into chunks).

        Returns float32 logits: (len(seq_ids), vocab) for the last token of each sequence, or with all_logits
        (sum of lengths, vocab) for every token, sequences concatenated in seq_ids order.
        """
        if len(seq_ids) != len(token_lists):
            raise InputError(f"{len(seq_ids)} sequence ids but {len(token_lists)} token lists")
        ids = [self.check_tokens(t, what=f"sequence {s} token") for s, t in zip(seq_ids, token_lists)]
        for s, t in zip(seq_ids, ids):
            if t.size == 0:
                raise InputError(f"sequence {s}: nothing to prefill (empty token list)")
            self._check_growth(s, t.size)
        budget = max(1, MAX_LOGITS_ELEMENTS // self.vocab_size) if all_logits else None
        offsets = np.concatenate([[0], np.cumsum([t.size for t in ids])])
        out = np.empty((int(offsets[-1]) if all_logits else len(ids), self.vocab_size), dtype=np.float32)
        for step in self.kv.plan_chunks(seq_ids, [t.size for t in ids], token_budget=budget):
            lens = [stop - start for _, start, stop in step]
            flat = np.concatenate([ids[i][start:stop] for i, start, stop in step])
            if all_logits:
                pos = np.arange(flat.size, dtype=np.int32)
            else:
                pos = (np.cumsum(lens) - 1).astype(np.int32)
            logits = self._call_prefill([seq_ids[i] for i, _, _ in step], lens, flat, pos)
            row = 0
            for (i, start, stop), n in zip(step, lens):
                if all_logits:
                    out[offsets[i] + start : offsets[i] + stop] = logits[row : row + n]
                    row += n
                else:
                    if stop == ids[i].size:
                        out[i] = logits[row]
                    row += 1
        return out

    def prefill_at(self, seq_id: int, tokens: Sequence[int], positions: Sequence[int]) -> np.ndarray:
        """Append `tokens` to one sequence and return float32 logits (len(positions), vocab) at those indices of
        `tokens` (increasing): the prefill entry point computes the LM head only where `logit_pos` asks."""
        ids = self.check_tokens(tokens, what=f"sequence {seq_id} token")
        want = np.asarray(positions, dtype=np.int64)
        if ids.size == 0:
            raise InputError(f"sequence {seq_id}: nothing to prefill (empty token list)")
        if want.size and (want[0] < 0 or want[-1] >= ids.size or (np.diff(want) <= 0).any()):
            raise InputError(f"logit positions must increase within [0, {ids.size})")
        self._check_growth(seq_id, ids.size)
        budget = max(1, MAX_LOGITS_ELEMENTS // self.vocab_size)
        out = np.empty((want.size, self.vocab_size), dtype=np.float32)
        done = 0
        for step in self.kv.plan_chunks([seq_id], [ids.size], token_budget=budget):
            ((_, start, stop),) = step
            upto = int(np.searchsorted(want, stop))
            pos = (want[done:upto] - start).astype(np.int32)
            # a chunk nobody asked logits of still gives one row (never an empty gather), dropped here
            logits = self._call_prefill([seq_id], [stop - start], ids[start:stop], pos if pos.size else
                                        np.zeros(1, np.int32))
            out[done:upto] = logits[: pos.size]
            done = upto
        return out

    def _call_prefill(self, seq_ids: list[int], lens: list[int], flat: np.ndarray, pos: np.ndarray) -> np.ndarray:
        tensor = self._tvm.runtime.tensor
        with self.kv.forward(seq_ids, lens):
            logits, self.kv.obj = self._prefill(
                tensor(flat.reshape(1, -1), self._dev), tensor(pos, self._dev), self.kv.obj, self._params
            )
        return logits.numpy()[0]

    def decode(self, seq_ids: Sequence[int], tokens: Sequence[int], reuse: bool = False) -> np.ndarray:
        """One new token for each sequence; returns float32 logits (len(seq_ids), vocab). With reuse=True they are a
        view of a host buffer that the next decode of this batch size overwrites (nothing allocated per token)."""
        logits = self._decode_step(seq_ids, tokens)
        if not reuse:
            return logits.numpy()[:, 0, :]
        io = self._decode_buffers(len(seq_ids))
        logits.copyto(io.logits_view)
        return io.logits[:, 0, :]

    def _decode_step(self, seq_ids: Sequence[int], tokens: Sequence[int]) -> Any:
        """The decode call: device logits float32 [batch, 1, vocab]. Tokens the device sampler just wrote (its
        buffers' `ids`, passed back unchanged) are on the device already: nothing crosses for them."""
        if len(seq_ids) != len(tokens):
            raise InputError(f"{len(seq_ids)} sequence ids but {len(tokens)} tokens")
        if not seq_ids:
            raise InputError("decode needs at least one sequence")
        batch = len(seq_ids)
        io = self._decode_buffers(batch)
        if tokens is io.ids and io.ids_on_device:
            self._check_ids(io.ids)
        else:
            self._check_ids(tokens, out=io.ids)
            io.ids_dev.copyfrom(io.ids_view)
            io.ids_on_device = False
        for s in seq_ids:
            self._check_growth(s, 1)
        fn = self._decode1 if (self._decode1 is not None and batch == 1) else self._decode
        with self.kv.forward(seq_ids, io.ones):
            logits, self.kv.obj = fn(io.ids_dev, self.kv.obj, self._params)
        return logits

    def _check_ids(self, tokens: Sequence[int], out: np.ndarray | None = None) -> None:
        """check_tokens without allocating for an integer array (a decode loop's): its range, copied into `out`."""
        if isinstance(tokens, np.ndarray) and tokens.ndim == 1 and tokens.dtype.kind in "iu" and tokens.size:
            if tokens.min() >= 0 and tokens.max() < self.vocab_size:
                if out is not None and out is not tokens:
                    np.copyto(out, tokens, casting="unsafe")
                return
        ids = self.check_tokens(tokens)
        if out is not None:
            np.copyto(out, ids)

    # -- sampling on the device (cuda artifacts) -------------------------------------------------------------
    @property
    def has_device_sampler(self) -> bool:
        return self._sample is not None and self._sample_reset is not None

    def _require_sampler(self) -> None:
        if not self.has_device_sampler:
            raise InputError(f"{self.name}: this artifact has no device sampler (`sample` is exported by cuda builds)")

    def sample_buffers(self, batch: int) -> SampleBuffers:
        self._require_sampler()
        if batch not in self._sample_io:
            self._sample_io[batch] = SampleBuffers(self._tvm, self._dev, self._decode_buffers(batch))
        return self._sample_io[batch]

    def set_sampling(self, rows: Sequence[tuple[SamplingParams, int, int]]) -> SampleBuffers:
        """The parameter rows of a batch (one per sequence, in decode order): (params, seed, penalty slot);
        steps start at 0. Returns the batch size's buffers."""
        buf = self.sample_buffers(len(rows))
        for i, (params, seed, slot) in enumerate(rows):
            if not 0 <= slot < self.max_batch_size:
                raise InputError(f"penalty slot {slot} must be in [0, {self.max_batch_size})")
            device_params(params, seed, slot, 0, out=buf.params[i])
        return buf

    def reset_penalties(self, slot: int, prompt: Sequence[int]) -> None:
        """Clear one slot of the device penalty table and count the prompt's tokens in it (once per generation)."""
        self._require_sampler()
        if not 0 <= slot < self.max_batch_size:
            raise InputError(f"penalty slot {slot} must be in [0, {self.max_batch_size})")
        tvm = self._tvm
        if self._counts is None:
            self._counts = tvm.runtime.empty((self.max_batch_size, self.vocab_size), "int32", self._dev)
        ids = self.check_tokens(prompt, what="prompt token")
        self._counts = self._sample_reset(self._counts, tvm.runtime.tensor(ids, self._dev),
                                          tvm.runtime.tensor(np.array([slot], np.int32), self._dev))

    # -- the server's device sampling: rows with their own step and slot, masks, bias, log-probabilities -------
    @property
    def has_restore(self) -> bool:
        """sample_restore: a penalty slot for a generation part way through (newer cuda builds)."""
        return self._sample_restore is not None

    @property
    def has_sample_ext(self) -> bool:
        """sample_ext: logit_bias, grammar masks and log-probabilities on the device (newer cuda builds)."""
        return self._sample_ext is not None

    def _ensure_counts(self) -> Any:
        if self._counts is None:
            self._counts = self._tvm.runtime.empty((self.max_batch_size, self.vocab_size), "int32", self._dev)
        return self._counts

    def restore_penalties(self, slot: int, prompt: Sequence[int], generated: Sequence[int] = ()) -> None:
        """Slot `slot` of the penalty table as a generation after `prompt` that has generated `generated` so far
        (reset_penalties when nothing was generated; a preempted sequence that comes back needs its counts)."""
        if not generated:
            self.reset_penalties(slot, prompt)
            return
        if self._sample_restore is None:
            raise InputError(f"{self.name}: this artifact has no sample_restore (rebuild it with this ember)")
        if not 0 <= slot < self.max_batch_size:
            raise InputError(f"penalty slot {slot} must be in [0, {self.max_batch_size})")
        tvm = self._tvm
        ids = self.check_tokens(list(prompt) + list(generated), what="penalty token")
        meta = np.array([slot, len(prompt)], np.int32)
        self._counts = self._sample_restore(self._ensure_counts(), tvm.runtime.tensor(ids, self._dev),
                                            tvm.runtime.tensor(meta, self._dev))

    def decode_sample_rows(self, seq_ids: Sequence[int], tokens: Sequence[int], rows: np.ndarray,
                           aux: np.ndarray | None = None, logprobs: bool = False,
                           host_logits: bool = False) -> RowSample:
        """One decode step sampled on the device with a parameter row per sequence (`rows` float32 [batch,
        DEVICE_PARAMS]: `sample`, or [batch, DEVICE_EXT_PARAMS]: `sample_ext` with `aux`, int32 mask / bias words
        the rows point into). Per step the rows (and aux) go and the ids come back; the log-probabilities
        [batch, DEVICE_LOGPROB_COLS] with `logprobs`, and the logits (before any bias or mask) with `host_logits`
        (rows sampled on the host). Passing the returned ids back as `tokens` keeps them on the device."""
        logits = self._decode_step(seq_ids, tokens)
        io = self._decode_buffers(len(seq_ids))
        host = None
        if host_logits:
            logits.copyto(io.logits_view)
            host = io.logits[:, 0, :]
        out = self._sample_rows(logits, rows, aux, logprobs, "decode", io.ids_flat, io.ids, io.ids_view)
        io.ids_on_device = True
        return RowSample(out.ids, out.logprobs, host)

    def sample_rows(self, logits: np.ndarray, rows: np.ndarray, aux: np.ndarray | None = None,
                    logprobs: bool = False) -> RowSample:
        """Tokens for host logits [n, vocab] (the first ones after a prefill), sampled on the device as
        decode_sample_rows samples: the logits go once, the ids (and log-probabilities) come back."""
        n = logits.shape[0]
        if n == 0 or rows.shape[0] != n:
            raise InputError(f"{n} rows of logits but {rows.shape[0]} parameter rows")
        tvm = self._tvm
        if self._first_logits is None or self._first_logits.shape[0] < n:
            self._first_logits = tvm.runtime.empty((max(n, self.max_batch_size), 1, self.vocab_size), "float32",
                                                   self._dev)
        dev = self._first_logits._create_view((n, 1, self.vocab_size))
        dev.copyfrom(np.ascontiguousarray(logits, np.float32).reshape(n, 1, -1))
        buf = self._row_buffers("first", n, rows.shape[1])
        return self._sample_rows(dev, rows, aux, logprobs, "first", buf.ids_dev, buf.ids, buf.ids_view)

    def _sample_rows(self, logits: Any, rows: np.ndarray, aux: np.ndarray | None, logprobs: bool, kind: str,
                     ids_dev: Any, ids: np.ndarray, ids_view: Any) -> RowSample:
        batch, width = rows.shape
        if width == DEVICE_PARAMS:
            self._require_sampler()
            if aux is not None or logprobs:
                raise InputError("masks, logit_bias and log-probabilities need DEVICE_EXT_PARAMS rows (sample_ext)")
        elif width == DEVICE_EXT_PARAMS:
            if self._sample_ext is None:
                raise InputError(f"{self.name}: this artifact has no sample_ext (rebuild it with this ember)")
        else:
            raise InputError(f"parameter rows must be {DEVICE_PARAMS} or {DEVICE_EXT_PARAMS} wide, got {width}")
        slots = rows.view(np.int32)[:, SLOT]
        if batch and (slots.min() < 0 or slots.max() >= self.max_batch_size):
            raise InputError(f"penalty slots must be in [0, {self.max_batch_size})")
        buf = self._row_buffers(kind, batch, width)
        np.copyto(buf.params, rows, casting="no")
        buf.params_dev.copyfrom(buf.params_view)
        counts = self._ensure_counts()
        if width == DEVICE_PARAMS:
            self._sample(logits, buf.params_dev, counts, ids_dev, buf.info_dev)
        else:
            self._sample_ext(logits, buf.params_dev, counts, self._aux_tensor(aux), ids_dev, buf.info_dev,
                             buf.lp_dev)
        ids_dev.copyto(ids_view)
        lp = None
        if logprobs:
            buf.lp_dev.copyto(buf.lp_view)
            lp = buf.lp
        return RowSample(ids, lp, None)

    def _aux_tensor(self, aux: np.ndarray | None) -> Any:
        if self._aux is None:
            self._aux = AuxBuffer(self._tvm, self._dev)
        return self._aux.upload(aux)

    def _row_buffers(self, kind: str, batch: int, width: int) -> RowBuffers:
        key = (kind, batch, width)
        if key not in self._rows_io:
            self._rows_io[key] = RowBuffers(self._tvm, self._dev, batch, width, with_ids=kind != "decode")
        return self._rows_io[key]

    def _sample_on_device(self, logits: Any, buf: SampleBuffers) -> np.ndarray:
        if self._counts is None:
            raise InputError("reset_penalties(slot, prompt) must come before the first device sample")
        self._sample(logits, buf.next_params(), self._counts, buf.ids_dev, buf.info_dev)
        buf.ids_dev.copyto(buf.ids_view)  # the only copy of a step: the ids, to the host
        buf.io.ids_on_device = True
        return buf.ids

    def sample_logits(self, logits: np.ndarray, buf: SampleBuffers) -> int:
        """One token from host logits [vocab] on the device (the first token after a prefill; batch 1)."""
        if self._prefill_logits is None:
            self._prefill_logits = self._tvm.runtime.empty((1, 1, self.vocab_size), "float32", self._dev)
        self._prefill_logits.copyfrom(np.ascontiguousarray(logits, np.float32).reshape(1, 1, -1))
        return int(self._sample_on_device(self._prefill_logits, buf)[0])

    def decode_sample(self, seq_ids: Sequence[int], tokens: Sequence[int], buf: SampleBuffers) -> np.ndarray:
        """One decode step whose logits are sampled on the device: returns the next token ids (int32 [batch], a
        buffer the next call of this batch size overwrites). `buf` (set_sampling) holds each row's parameters;
        its step advances by one per call. Pass the returned ids back as `tokens`: they stay on the device, and
        per token only the new ids come back (and the parameter rows, for their step, go), nothing allocated."""
        logits = self._decode_step(seq_ids, tokens)
        return self._sample_on_device(logits, buf)

    def _decode_buffers(self, batch: int) -> DecodeBuffers:
        if batch not in self._decode_io:
            self._decode_io[batch] = DecodeBuffers(self._tvm, self._dev, batch, self.vocab_size)
        return self._decode_io[batch]


def aligned_host(tvm: Any, shape: tuple[int, ...], dtype: str) -> tuple[np.ndarray, Any]:
    """A host array and its TVM view (64-byte aligned, as TVM requires of memory it did not allocate)."""
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    raw = np.empty(nbytes + 64, dtype=np.uint8)
    start = -raw.ctypes.data % 64
    host = raw[start : start + nbytes].view(dtype).reshape(shape)
    return host, tvm.runtime.from_dlpack(host)


class DecodeBuffers:
    """Made once per batch size: the device token ids [batch, 1] decode reads (and the device sampler writes, as
    a [batch] view), their host copy `ids` (with its TVM view), and a host logits array with its TVM view."""

    def __init__(self, tvm: Any, dev: Any, batch: int, vocab: int) -> None:
        self.ids_dev = tvm.runtime.empty((batch, 1), "int32", dev)
        self.ids_flat = self.ids_dev._create_view((batch,))
        self.ids, self.ids_view = aligned_host(tvm, (batch,), "int32")
        self.ids_on_device = False  # ids_dev holds `ids`, written there by the device sampler
        self.logits, self.logits_view = aligned_host(tvm, (batch, 1, vocab), "float32")
        self.ones = [1] * batch


class SampleBuffers:
    """Made once per batch size for the device sampler: parameter rows `params` (host, with their TVM view) and on
    the device, the sampled ids (the decode buffers' device ids, and `ids` on the host: pass it back to
    decode_sample unchanged and no id goes to the device) and the kernel's per-row report (device)."""

    def __init__(self, tvm: Any, dev: Any, io: DecodeBuffers) -> None:
        batch = io.ids.size
        self.io = io
        self.params, self._params_view = aligned_host(tvm, (batch, DEVICE_PARAMS), "float32")
        self.params[:] = 0
        self.params_dev = tvm.runtime.empty((batch, DEVICE_PARAMS), "float32", dev)
        self.ids_dev, self.ids, self.ids_view = io.ids_flat, io.ids, io.ids_view
        self.info_dev = tvm.runtime.empty((batch, len(DEVICE_INFO_FIELDS)), "int32", dev)
        self._steps = self.params.view(np.int32)[:, STEP]  # a view made once, bumped in place per sample

    def next_params(self) -> Any:
        """The device rows of this step (the step counter is in them: batch x 48 bytes cross per step); the step
        of `params` advances by one."""
        self.params_dev.copyfrom(self._params_view)
        self._steps += 1
        return self.params_dev


class RowSample:
    """What a device sample returns: the ids (int32 [batch], a buffer the next call of its kind and size
    overwrites), the log-probability rows when asked (float32 [batch, DEVICE_LOGPROB_COLS], a buffer too) and the
    host logits when asked (decode_sample_rows' host_logits)."""

    __slots__ = ("ids", "logprobs", "logits")

    def __init__(self, ids: np.ndarray, logprobs: np.ndarray | None, logits: np.ndarray | None) -> None:
        self.ids, self.logprobs, self.logits = ids, logprobs, logits


class RowBuffers:
    """Made once per (kind, batch size, row width): the parameter rows (host with its TVM view, and device), the
    kernel's report, the log-probability rows (device, host) and, for the first tokens after a prefill, the ids."""

    def __init__(self, tvm: Any, dev: Any, batch: int, width: int, with_ids: bool) -> None:
        self.params, self.params_view = aligned_host(tvm, (batch, width), "float32")
        self.params_dev = tvm.runtime.empty((batch, width), "float32", dev)
        self.info_dev = tvm.runtime.empty((batch, len(DEVICE_INFO_FIELDS)), "int32", dev)
        self.lp, self.lp_view = aligned_host(tvm, (batch, DEVICE_LOGPROB_COLS), "float32")
        self.lp_dev = tvm.runtime.empty((batch, DEVICE_LOGPROB_COLS), "float32", dev)
        if with_ids:
            self.ids_dev = tvm.runtime.empty((batch,), "int32", dev)
            self.ids, self.ids_view = aligned_host(tvm, (batch,), "int32")


class AuxBuffer:
    """sample_ext's mask / bias words on the device: one allocation that grows (to a power of two), and per step
    a view of the words that step uses, copied from an aligned host buffer."""

    def __init__(self, tvm: Any, dev: Any) -> None:
        self._tvm, self._dev = tvm, dev
        self._grow(1024)

    def _grow(self, words: int) -> None:
        self.capacity = 1 << max(10, (words - 1).bit_length())
        self.dev = self._tvm.runtime.empty((self.capacity,), "int32", self._dev)
        self.host, self.host_view = aligned_host(self._tvm, (self.capacity,), "int32")

    def upload(self, aux: np.ndarray | None) -> Any:
        """The device tensor to pass (all of it when aux is None: the rows point at nothing in it)."""
        if aux is None or aux.size == 0:
            return self.dev
        n = int(aux.size)
        if n > self.capacity:
            self._grow(n)
        self.host[:n] = aux
        dev = self.dev._create_view((n,))
        dev.copyfrom(self.host_view._create_view((n,)))
        return dev
