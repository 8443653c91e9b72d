"""Fuzzing what the runtime reads from an artifact folder (issue 14, part 5): safetensors shard headers, the
manifest, tokenizer.json and chat templates. Every failure must be a one-line EmberError (naming the file where
there is one); no other exception, no crash, no case over 10 s. Bounded for CI (tests/conftest.py's profile;
EMBER_FUZZ_EXAMPLES=N for a longer run); each test counts its cases."""
from __future__ import annotations

import json
import struct
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, strategies as st

from ember.errors import EmberError
from ember.runtime.artifact import check_files, read_manifest
from ember.runtime.shards import Shard

CASES: dict[str, int] = {}
LIMIT_S = 10.0

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                         st.text(max_size=12))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                                 st.dictionaries(st.text(max_size=8), inner,
                                                                                 max_size=4)), max_leaves=12)


def one_line(err: EmberError, name: str | None = None) -> None:
    message = str(err).strip()
    assert message and "\n" not in message, message
    if name is not None:
        assert name in message, message


def run_case(kind: str, fn) -> None:
    CASES[kind] = CASES.get(kind, 0) + 1
    started = time.perf_counter()
    fn()
    assert time.perf_counter() - started < LIMIT_S, f"{kind}: a case took over {LIMIT_S} s"


# -- safetensors shards ------------------------------------------------------------------------------------------------
entry = st.fixed_dictionaries({}, optional={
    "dtype": st.one_of(st.sampled_from(["F32", "F16", "BF16", "U8", "I64", "F8_E4M3", "Q4", ""]), json_values),
    "shape": st.one_of(st.lists(st.integers(-3, 2**40), max_size=4), json_values),
    "data_offsets": st.one_of(st.lists(st.integers(-8, 2**40), min_size=0, max_size=3), json_values),
})


@given(header=st.dictionaries(st.text(max_size=6), st.one_of(entry, json_values), max_size=4),
       data=st.binary(max_size=256), length_lie=st.one_of(st.none(), st.integers(0, 2**64 - 1)))
def test_fuzzed_shard_header(tmp_path_factory, header, data, length_lie):
    path = tmp_path_factory.getbasetemp() / "fuzz.safetensors"
    text = json.dumps(header).encode()
    length = len(text) if length_lie is None else length_lie
    path.write_bytes(struct.pack("<Q", length) + text + data)

    def case() -> None:
        try:
            shard = Shard(path)
            for name in header:
                if name == "__metadata__" or name not in shard:
                    continue
                shard.info(name)
                np.asarray(shard.array(name)).sum()
        except EmberError as err:
            one_line(err, str(path))

    run_case("safetensors", case)


@given(data=st.binary(max_size=64))
def test_random_bytes_as_a_shard(tmp_path_factory, data):
    path = tmp_path_factory.getbasetemp() / "noise.safetensors"
    path.write_bytes(data)

    def case() -> None:
        try:
            Shard(path)
        except EmberError as err:
            one_line(err, str(path))

    run_case("safetensors", case)


# -- the manifest ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def manifest_raw(tiny) -> dict:
    return json.loads((tiny.path / "manifest.json").read_text())


def paths_of(value, prefix=()):
    """Every (path, value) in a JSON tree."""
    yield prefix, value
    if isinstance(value, dict):
        for k, v in value.items():
            yield from paths_of(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value[:3]):
            yield from paths_of(v, prefix + (i,))


@given(data=st.data())
def test_fuzzed_manifest_fields(tiny, manifest_raw, tmp_path_factory, data):
    """One to three fields of a real manifest replaced by arbitrary JSON (or dropped), resealed so the checks
    behind the manifest's own hash are reached."""
    from ember.runtime.artifact import manifest_digest
    from ember.runtime.loader import check_target

    raw = json.loads(json.dumps(manifest_raw))
    spots = [p for p, _ in paths_of(raw) if p and p[0] != "manifest_sha256"]
    for _ in range(data.draw(st.integers(1, 3))):
        spot = data.draw(st.sampled_from(spots))
        holder = raw
        try:
            for key in spot[:-1]:
                holder = holder[key]
            if data.draw(st.booleans()) and isinstance(holder, dict):
                holder.pop(spot[-1], None)
            else:
                holder[spot[-1]] = data.draw(json_values)
        except (KeyError, IndexError, TypeError):
            continue
    raw["manifest_sha256"] = manifest_digest(raw) if data.draw(st.booleans(), label="reseal") else "0" * 64
    folder = tmp_path_factory.getbasetemp() / "fuzz-artifact"
    if not folder.exists():
        import shutil

        shutil.copytree(tiny.path, folder)
    (folder / "manifest.json").write_text(json.dumps(raw))

    def case() -> None:
        try:
            manifest = read_manifest(folder)
            check_target(manifest, "cpu")
            check_files(folder, manifest)
        except EmberError as err:
            one_line(err)

    run_case("manifest", case)


@given(content=st.one_of(st.text(max_size=64).map(str.encode), st.binary(max_size=64),
                         json_values.map(lambda v: json.dumps(v).encode()),
                         st.integers(1, 200000).map(lambda n: b"[" * n)))  # nesting deeper than json's recursion
def test_manifest_that_is_not_json(tmp_path_factory, content):
    folder = tmp_path_factory.getbasetemp() / "fuzz-text"
    folder.mkdir(exist_ok=True)
    (folder / "manifest.json").write_bytes(content)

    def case() -> None:
        try:
            read_manifest(folder)
        except EmberError as err:
            one_line(err, "manifest.json")

    run_case("manifest", case)


# -- tokenizer files ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tokenizer_json(tiny) -> dict:
    return json.loads((tiny.path / "tokenizer.json").read_text())


@given(data=st.data())
def test_fuzzed_tokenizer_json(tokenizer_json, tmp_path_factory, data):
    from ember.runtime.artifact import TokenizerInfo
    from ember.runtime.tokenizer import Tokenizer

    raw = json.loads(json.dumps(tokenizer_json))
    spots = [p for p, _ in paths_of(raw) if p]
    for _ in range(data.draw(st.integers(1, 3))):
        spot = data.draw(st.sampled_from(spots))
        holder = raw
        try:
            for key in spot[:-1]:
                holder = holder[key]
            holder[spot[-1]] = data.draw(json_values)
        except (KeyError, IndexError, TypeError):
            continue
    text = json.dumps(raw)
    if data.draw(st.booleans(), label="truncate"):
        text = text[: data.draw(st.integers(0, len(text)))]
    path = tmp_path_factory.getbasetemp() / "tokenizer.json"
    path.write_text(text)
    prompt = data.draw(st.text(max_size=24))

    def case() -> None:
        try:
            tok = Tokenizer(path, TokenizerInfo(bos_token_id=0, eos_token_ids=[1], add_bos_token=True))
            ids = tok.encode(prompt)
            tok.decode(ids)
        except EmberError as err:
            one_line(err, str(path))

    run_case("tokenizer", case)


# -- chat templates ----------------------------------------------------------------------------------------------------
TEMPLATE_PIECES = [
    "{{ messages[0]['content'] }}", "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}",
    "{% if add_generation_prompt %}assistant:{% endif %}", "{{ bos_token }}", "{{ raise_exception('no') }}",
    "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",  # 1e10 steps
    "{{ 'x' * 1000000000 }}", "{{ messages * 100000000 }}", "{{ (messages|tojson) * 99999999 }}",
    "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",  # unbounded recursion
    "{{ messages.__class__.__mro__ }}", "{{ ''.__class__.__subclasses__() }}", "{{ cycler.__init__.__globals__ }}",
    "{{ 1 / 0 }}", "{{ 10 ** 10 ** 10 }}", "{{ messages[5] }}", "{{ m.content.upper() }}", "{% set x = 1 %}",
    "{{ strftime_now('%Y') }}", "{{ '%s' % messages }}", "{{ 'abc'.ljust(10**10) }}", "{{ range(10)|list }}",
    "{% for x in 'ab' %}{{ loop.index }}{% endfor %}", "{{ x.y.z }}", "{{ (1, 2)[0] }}", "{% generation %}a{% endgeneration %}",
    "{{", "{% for %}", "{% endfor %}", "}}", "{{ messages|map(attribute='content')|join(', ') }}", "{{ 'a'|format(1) }}",
    "{{ '{:>1000000000}'.format('a') }}", "{{ [1] * 10**9 }}", "{{ dict(a=1).items()|list }}",
]


@given(pieces=st.lists(st.sampled_from(TEMPLATE_PIECES), min_size=1, max_size=4), noise=st.text(max_size=16),
       content=st.text(max_size=16))
def test_fuzzed_chat_template(pieces, noise, content):
    from ember.runtime.artifact import TokenizerInfo
    from ember.runtime.tokenizer import Tokenizer

    template = noise.join(pieces)

    def case() -> None:
        try:
            tok = Tokenizer.__new__(Tokenizer)  # the template alone: no tokenizer file needed
            tok.path = Path("tokenizer.json")
            tok.info = TokenizerInfo(bos_token_id=None, eos_token_ids=[], chat_template=template)
            tok.bos_token_id, tok.eos_token_ids = None, []
            out = tok.apply_chat_template([{"role": "user", "content": content}])
            assert isinstance(out, str)
        except EmberError as err:
            one_line(err)

    run_case("chat template", case)


def test_report_cases():
    print("\nfuzz cases run: " + ", ".join(f"{k} {v}" for k, v in sorted(CASES.items())))
