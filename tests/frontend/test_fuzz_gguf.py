"""Fuzzing the GGUF path ember uses (issue 14, part 5): a valid tiny GGUF, its bytes mutated (flips, truncations,
header counts, metadata value types, string lengths, tensor dims, types and offsets overwritten with lying values),
read by `resolve_model` as `ember compile` does, then every tensor's header and data. Anything but a one-line
EmberError naming the file is a failure, and so is a case that takes over 10 s."""
from __future__ import annotations

import struct
import time
from pathlib import Path

import pytest
from gguf import GGMLQuantizationType as Q
from hypothesis import given, strategies as st
from test_gguf import hf_weights, write_gguf

from ember.errors import EmberError
from ember.frontend.source import resolve_model

CASES = {"n": 0}


@pytest.fixture(scope="module")
def seed_file(tmp_path_factory) -> bytes:
    config, weights = hf_weights("llama", num_hidden_layers=1, vocab_size=64, hidden_size=32, intermediate_size=64,
                                 num_attention_heads=2, num_key_value_heads=1)
    path = write_gguf(tmp_path_factory.mktemp("fuzz") / "seed.gguf", "llama", config, weights, lambda name: Q.Q8_0)
    return path.read_bytes()


def header_length(data: bytes) -> int:
    """Where the tensor data starts (the header is what the mutations aim at)."""
    from ember.frontend.importers.gguf_file import read_gguf_file
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".gguf") as handle:
        handle.write(data)
        handle.flush()
        return read_gguf_file(handle.name).data_offset


mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 1 << 20), st.integers(1, 255)),
    st.tuples(st.just("truncate"), st.integers(0, 1 << 20), st.just(0)),
    st.tuples(st.just("u64"), st.integers(0, 1 << 20), st.sampled_from([0, 1, 2**31, 2**32 - 1, 2**63, 2**64 - 1])),
    st.tuples(st.just("u32"), st.integers(0, 1 << 20), st.sampled_from([0, 1, 7, 12, 13, 30, 2**31, 2**32 - 1])),
)


def mutate(data: bytes, header: int, ops: list[tuple[str, int, int]]) -> bytes:
    out = bytearray(data)
    for kind, where, value in ops:
        at = where % max(1, header)  # aim at the header: its bytes decide everything the reader trusts
        if kind == "flip" and at < len(out):
            out[at] ^= value
        elif kind == "truncate":
            del out[where % max(1, len(out)):]
        elif kind == "u64" and at + 8 <= len(out):
            out[at:at + 8] = struct.pack("<Q", value)
        elif kind == "u32" and at + 4 <= len(out):
            out[at:at + 4] = struct.pack("<I", value)
    return bytes(out)


@given(ops=st.lists(mutation, min_size=1, max_size=4))
def test_mutated_gguf_is_a_one_line_error_or_reads(seed_file, tmp_path_factory, ops):
    CASES["n"] += 1
    path = tmp_path_factory.getbasetemp() / "fuzz-case.gguf"
    path.write_bytes(mutate(seed_file, FUZZ_HEADER.setdefault("n", header_length(seed_file)), ops))
    started = time.perf_counter()
    try:
        source = resolve_model(str(path))
        weights = source.weights
        if weights is not None:
            for name in weights.names():
                weights.header(name)
                weights.get(name)
    except EmberError as err:
        message = str(err)
        assert "\n" not in message.strip() and str(path) in message, message
    assert time.perf_counter() - started < 10


FUZZ_HEADER: dict[str, int] = {}


def test_report_gguf_cases():
    print(f"\nGGUF fuzz cases run: {CASES['n']}")
