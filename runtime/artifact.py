"""The artifact format, defined once: manifest schema, file names, and the writer.

An artifact is a folder:
    manifest.json     what this is (see `Manifest`)
    model.so          the kernels and the Relax VM bytecode (exported by TVM)
    params/*.safetensors   weights, in shards (absent for library-only or random-weight builds)
    tokenizer.json, tokenizer_config.json   (optional)
    verify/golden.safetensors   golden outputs for `ember verify` (see `VerificationInfo`; optional)

The compiler writes artifacts through `ArtifactWriter`; the runtime reads them with `read_manifest`.
Integrity: the manifest records every file's size and sha256 and a sha256 of its own content. Every load checks
the manifest's own hash and the file sizes (`check_files`, no hashing); `verify_files` (`--check`) hashes all.
"""
from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ArtifactError
from .output_rules import ARTIFACT, Destination, check_destination, foreign_entry

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
LIBRARY_FILE = "model.so"
PARAMS_DIR = "params"
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"

# How the weights of an artifact are provided.
WEIGHTS_PACKED = "packed"  # safetensors shards in params/
WEIGHTS_RANDOM = "random"  # benchmark build: the runtime makes true-shape random weights on the device
WEIGHTS_NONE = "none"  # library only: weights must be supplied at load time


@dataclass
class ParamInfo:
    name: str
    shape: list[int]
    dtype: str
    file: str | None = None  # relative path of the shard holding it; None unless weights are packed
    scheme: str | None = None  # quantization scheme of this tensor (e.g. "q0f16", "q4f16"); None = plain


@dataclass
class KVCacheInfo:
    num_layers: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    dtype: str
    sliding_window: int | None = None  # HF convention (the query plus W-1 previous tokens)
    page_size: int = 16


@dataclass
class TargetInfo:
    kind: str  # "cpu" | "cuda" | "metal"
    archs: list[str] = field(default_factory=list)  # e.g. ["sm_80", "sm_90"]
    host: str = ""  # llvm triple of the host code
    checks: dict[str, Any] = field(default_factory=dict)  # the target's static checks of its build (metal: MSL, Mach-O)


@dataclass
class TokenizerInfo:
    file: str = TOKENIZER_FILE
    bos_token_id: int | None = None
    eos_token_ids: list[int] = field(default_factory=list)
    add_bos_token: bool = False
    chat_template: str | None = None


@dataclass
class VerificationInfo:
    """Golden outputs recorded at compile time (golden.py) for `ember verify` (runtime/verify.py): the logits of a
    fixed prompt at every position and of `greedy_steps` greedy decode steps, computed on the compile host by a cpu
    build of the same IR with the same weights. `layers` None: the whole model; else a truncation to that many
    layers whose entry points (`entry_points`, e.g. prefill -> verify_prefill) are in the main library and read only
    the weights in `params` (the others may be left uninitialised)."""

    golden: str  # relative path of the safetensors file: prompt_ids, prefill_logits, decode_logits, greedy_ids
    prompt_ids: list[int]
    greedy_steps: int
    tolerance: float  # max |logit diff| allowed, as a fraction of the logit scale (max |golden logit|)
    compute_dtype: str
    reference: str  # what computed the golden outputs, e.g. "cpu build of the same IR (x86_64)"
    layers: int | None = None
    entry_points: dict[str, str] = field(default_factory=dict)  # model function -> the library's (empty: same)
    params: list[str] = field(default_factory=list)  # weights the entry points read (empty: all)
    library: str = LIBRARY_FILE
    seconds: float = 0.0  # what recording them added to the compile


@dataclass
class Manifest:
    name: str
    architecture: str
    config: dict[str, Any]  # the model configuration (HF config.json keys)
    quantization: str  # weight format, e.g. "q0f32", "q0f16"
    compute_dtype: str  # dtype of activations, e.g. "float32" on cpu
    target: TargetInfo
    kv_cache: KVCacheInfo
    vocab_size: int
    context_length: int
    functions: list[str]
    params: list[ParamInfo]
    weights: str = WEIGHTS_NONE
    tokenizer: TokenizerInfo | None = None
    passes: list[str] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)  # ember, apache-tvm, apache-tvm-ffi
    files: dict[str, str] = field(default_factory=dict)  # relative path -> sha256
    sizes: dict[str, int] = field(default_factory=dict)  # relative path -> bytes (absent in older manifests)
    manifest_sha256: str | None = None  # sha256 of the manifest itself without this field (`manifest_digest`)
    format_version: int = FORMAT_VERSION
    library: str = LIBRARY_FILE
    notes: list[str] = field(default_factory=list)  # e.g. what was requantized
    source: str | None = None  # the model file or folder it was compiled from, as given then (informational)
    verification: VerificationInfo | None = None  # golden outputs for `ember verify` (absent in older manifests)

    @property
    def is_benchmark_build(self) -> bool:
        return self.weights == WEIGHTS_RANDOM

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = MANIFEST_FILE) -> "Manifest":
        version = raw.get("format_version")
        if version != FORMAT_VERSION:
            raise ArtifactError(
                f"{source}: format_version {version!r} is not supported (this ember reads {FORMAT_VERSION})"
            )
        try:
            data = dict(raw)
            data["target"] = TargetInfo(**raw["target"])
            data["kv_cache"] = KVCacheInfo(**raw["kv_cache"])
            data["params"] = [ParamInfo(**p) for p in raw["params"]]
            data["tokenizer"] = TokenizerInfo(**raw["tokenizer"]) if raw.get("tokenizer") else None
            data["verification"] = VerificationInfo(**raw["verification"]) if raw.get("verification") else None
            return cls(**data)
        except (KeyError, TypeError) as err:
            raise ArtifactError(f"{source}: malformed manifest ({err})") from None


def read_manifest(folder: str | os.PathLike) -> Manifest:
    folder = Path(folder)
    path = folder / MANIFEST_FILE
    if not folder.is_dir():
        raise ArtifactError(f"{folder}: no such artifact folder")
    if not path.is_file():
        raise ArtifactError(f"{folder}: not an ember artifact (no {MANIFEST_FILE})")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ArtifactError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(raw, dict):
        raise ArtifactError(f"{path}: malformed manifest (not a JSON object)")
    sealed = raw.get("manifest_sha256")
    if sealed is not None and sealed != manifest_digest(raw):
        raise ArtifactError(f"{path}: edited after the compile (its content does not match its manifest_sha256)")
    return Manifest.from_dict(raw, source=str(path))


def manifest_digest(raw: dict[str, Any]) -> str:
    """sha256 of a manifest's content (canonical JSON, without the manifest_sha256 field itself)."""
    body = {k: v for k, v in raw.items() if k != "manifest_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def check_files(folder: str | os.PathLike, manifest: Manifest) -> None:
    """The check of every load: each file the manifest lists exists and has its recorded size (no hashing)."""
    folder = Path(folder)
    for rel in manifest.files:
        path = folder / rel
        if not path.is_file():
            raise ArtifactError(f"{folder}: {rel} is listed in the manifest but missing")
        expected = manifest.sizes.get(rel)
        if expected is not None and (found := path.stat().st_size) != expected:
            raise ArtifactError(
                f"{folder}: {rel} has {found} bytes, the manifest says {expected} (truncated or replaced)"
            )


def verify_files(folder: str | os.PathLike, manifest: Manifest) -> None:
    """The full check (`--check`): sizes, then every file's sha256."""
    folder = Path(folder)
    check_files(folder, manifest)
    for rel, expected in manifest.files.items():
        if sha256_file(folder / rel) != expected:
            raise ArtifactError(f"{folder}: {rel} does not match its sha256 in the manifest (corrupt or edited)")


class ArtifactWriter:
    """Builds an artifact in a temporary folder beside the destination, then moves it into place.

    Usage:
        with ArtifactWriter(final_dir, replace=force) as writer:
            lib.export_library(writer.path / LIBRARY_FILE)
            ...
            writer.commit(manifest)   # hashes every file, writes manifest.json, moves it into place
    The destination follows `output_rules.check_destination` (checked on entry and again at commit, since a build
    takes a while): new, an empty folder, or (with `replace`) an ember artifact, which is swapped for the new one in
    one atomic step and deleted only then. Leaving the block without commit() (an exception) deletes the temporary
    folder: nothing half-written, and an old artifact stays as it was.
    """

    def __init__(self, destination: str | os.PathLike, *, replace: bool = False, label: str = "{output}") -> None:
        self.given = destination
        self.destination = Path(destination).absolute()
        self.replace = replace
        self.label = label
        self._tmp: Path | None = None

    @property
    def path(self) -> Path:
        assert self._tmp is not None, "use ArtifactWriter as a context manager"
        return self._tmp

    def check(self) -> Destination:
        return check_destination(self.given, replace=self.replace, label=self.label)

    def __enter__(self) -> "ArtifactWriter":
        self.check()
        # Same filesystem as the destination so the final move is atomic, but outside compiled/<name>.
        parent = self.destination.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
            self._tmp = Path(tempfile.mkdtemp(prefix=f".{self.destination.name}.tmp-", dir=parent))
        except OSError as err:
            raise ArtifactError(f"{parent}: cannot write there ({err.strerror or err})") from None
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._tmp is not None and self._tmp.exists():
            shutil.rmtree(self._tmp, ignore_errors=True)
        self._tmp = None

    def commit(self, manifest: Manifest) -> Path:
        files = sorted(p for p in self.path.rglob("*") if p.is_file() and p.name != MANIFEST_FILE)
        manifest.files = {str(p.relative_to(self.path)): sha256_file(p) for p in files}
        manifest.sizes = {str(p.relative_to(self.path)): p.stat().st_size for p in files}
        manifest.manifest_sha256 = manifest_digest(json.loads(manifest.to_json()))
        (self.path / MANIFEST_FILE).write_text(manifest.to_json())
        os.chmod(self.path, 0o755)  # mkdtemp made it private
        target = self.check()
        if target.state == ARTIFACT:
            _swap_in(self.path, self.destination, self.check)
            shutil.rmtree(self.path, ignore_errors=True)  # the old artifact, now at the temporary path
        else:  # rename(2) onto an empty folder replaces it, and fails if anything appeared in it meanwhile
            try:
                os.rename(self.path, self.destination)
            except OSError as err:
                raise ArtifactError(f"{self.destination}: changed while compiling ({err.strerror}); "
                                    "nothing was replaced") from None
        self._tmp = None
        return self.destination


def _swap_in(new: Path, destination: Path, recheck) -> None:
    """Put `new` at `destination` (an artifact) and the old artifact at `new`'s path, atomically where the system
    can exchange two paths (Linux renameat2), else by two renames that are undone if the second fails."""
    if _exchange(new, destination):
        if foreign_entry(new) is not None:  # someone wrote into the old artifact after the check: put it back
            _exchange(new, destination)
            recheck()
            raise ArtifactError(f"{destination}: changed while compiling; nothing was replaced")
        return
    old = destination.with_name(f".{destination.name}.old-{os.getpid()}")
    os.rename(destination, old)
    try:
        os.rename(new, destination)
    except OSError:
        os.rename(old, destination)
        raise
    os.rename(old, new)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with renameat2(RENAME_EXCHANGE); False where the system cannot."""
    if sys.platform != "linux":
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:  # glibc before 2.28
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # kernel or filesystem without it
        return False
    raise OSError(code, os.strerror(code), str(b))
