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

Compatibility (README "Shipping"): this runtime reads its own format version and the one before it
(`READABLE_FORMATS`); any other is refused in one line that names the ember version which wrote it.
"""
from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import ArtifactError
from .output_rules import ARTIFACT, Destination, check_destination, foreign_entry

# 2: the build fingerprint (`BuildInfo`); verification.seconds dropped (a timing made builds differ)
# 3: kv_cache.window_in_kernels (a sliding window applied as a mask by the kernels, over a cache of every token)
FORMAT_VERSION = 3
READABLE_FORMATS = (FORMAT_VERSION - 1, FORMAT_VERSION)
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
    # True: the attention kernels apply sliding_window as a mask and the cache keeps every token; False (formats
    # 1 and 2 too): TVM's cache drops what leaves the window (targets/attention_window.py)
    window_in_kernels: bool = False
    # the layers sliding_window applies to when only some have it (Gemma's local layers; the others are global),
    # always with window_in_kernels; None: every layer. Written only when set, so other manifests stay as they were.
    window_layers: list[int] | None = None


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


@dataclass
class BuildInfo:
    """What went into a build: the same fingerprint means the same inputs, options and tools, and (reproducible
    builds) byte-identical files. `inputs`: name -> sha256 of each file read (model files by their name in the
    source, `config` the parsed configuration); `options`: the compile options and the build knobs set in the
    environment; `tools`: the compilers that made native code (nvcc, the C compiler, zig)."""

    fingerprint: str  # sha256 over inputs, options, tools and the manifest's versions (`build_fingerprint`)
    inputs: dict[str, str] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    tools: dict[str, str] = field(default_factory=dict)


@dataclass
class TensorParallelInfo:
    """A model split over `shards` devices (passes/shard_tensor_parallel.py): every shard runs the one library on
    its own weights, which `shard_dirs[r]` holds (params' `file` is relative to it; each shard's safetensors load
    alone). `layout`: each parameter's cut (column: output rows, row: input columns, vocab: vocabulary rows,
    replicated, rank: made per shard, [rank * rank_values[name]]); the manifest's shapes and kv_cache are one
    shard's. `collectives`: the packed functions the library calls (Target.collectives)."""

    shards: int
    layout: dict[str, str]
    shard_dirs: list[str]
    collectives: dict[str, str]
    rank_values: dict[str, int] = field(default_factory=dict)

    def shard_file(self, rank: int, file: str) -> str:
        return f"{self.shard_dirs[rank]}/{file}"


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
    build: BuildInfo | None = None  # the build fingerprint (format 2 on)
    tensor_parallel: TensorParallelInfo | None = None  # written only for sharded builds (older runtimes refuse them)

    @property
    def is_benchmark_build(self) -> bool:
        return self.weights == WEIGHTS_RANDOM

    def to_json(self) -> str:
        data = asdict(self)
        if data["kv_cache"].get("window_layers") is None:  # optional: absent unless some layers are global
            data["kv_cache"].pop("window_layers", None)
        if data["tensor_parallel"] is None:
            data.pop("tensor_parallel")
        return json.dumps(data, indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = MANIFEST_FILE) -> "Manifest":
        check_format(raw, source)
        try:
            data = dict(raw)
            data["target"] = TargetInfo(**raw["target"])
            data["kv_cache"] = KVCacheInfo(**raw["kv_cache"])
            data["params"] = [ParamInfo(**p) for p in raw["params"]]
            data["tokenizer"] = TokenizerInfo(**raw["tokenizer"]) if raw.get("tokenizer") else None
            verification = raw.get("verification")
            data["verification"] = VerificationInfo(**verification) if verification else None
            data["build"] = BuildInfo(**raw["build"]) if raw.get("build") else None
            data["tensor_parallel"] = TensorParallelInfo(**raw["tensor_parallel"]) if raw.get("tensor_parallel") else None
            manifest = cls(**data)
        except (KeyError, TypeError, AttributeError) as err:
            raise ArtifactError(f"{source}: malformed manifest ({err})") from None
        problem = _type_problem(manifest, "")
        if problem is not None:
            raise ArtifactError(f"{source}: malformed manifest ({problem})")
        return manifest


def _type_problem(value: Any, where: str, hint: Any = None) -> str | None:
    """None if `value` has the type its dataclass field declares (recursively), else what is wrong and where: the
    runtime then trusts the manifest's types (a sealed manifest can still be written by anyone)."""
    import dataclasses
    import types
    import typing

    if hint is None and dataclasses.is_dataclass(value):
        hints = typing.get_type_hints(type(value))
        for f in dataclasses.fields(value):
            problem = _type_problem(getattr(value, f.name), f"{where}{f.name}", hints[f.name])
            if problem is not None:
                return problem
        return None
    if hint is Any or hint is None:
        return None
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if any(_type_problem(value, where, option) is None for option in options):
            return None
        return f"{where} has an unexpected type {type(value).__name__}"
    if hint is type(None):
        return None if value is None else f"{where} must be null"
    if dataclasses.is_dataclass(hint):
        return _type_problem(value, where + ".") if isinstance(value, hint) else f"{where} must be an object"
    if origin is list:
        if not isinstance(value, list):
            return f"{where} must be a list"
        (item,) = typing.get_args(hint)
        for i, element in enumerate(value):
            problem = _type_problem(element, f"{where}[{i}]", item)
            if problem is not None:
                return problem
        return None
    if origin is dict:
        if not isinstance(value, dict):
            return f"{where} must be an object"
        key_type, value_type = typing.get_args(hint)
        for key, element in value.items():
            if not isinstance(key, key_type):
                return f"{where} has a key that is not a {key_type.__name__}"
            problem = _type_problem(element, f"{where}[{key!r}]", value_type)
            if problem is not None:
                return problem
        return None
    if hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, hint)
    return None if ok else f"{where} must be {getattr(hint, '__name__', hint)}, got {type(value).__name__}"


def check_format(raw: dict[str, Any], source: str) -> None:
    """The compatibility rule: formats in READABLE_FORMATS load; others are refused naming who can read them."""
    version = raw.get("format_version")
    if version in READABLE_FORMATS and type(version) is int:
        return
    from .. import __version__ as ours

    versions = raw.get("versions")
    writer = versions.get("ember") if isinstance(versions, dict) else None
    readable = f"{READABLE_FORMATS[0]} and {READABLE_FORMATS[1]}"
    by = f"ember {writer}" if isinstance(writer, str) else "the ember that wrote it"
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise ArtifactError(f"{source}: format_version {version} is newer than this ember ({ours}) reads "
                            f"({readable}); load it with {by} or later, or recompile it with this one")
    if isinstance(version, int):
        raise ArtifactError(f"{source}: format_version {version} is older than this ember ({ours}) reads "
                            f"({readable}); load it with {by}, or recompile it with this one")
    raise ArtifactError(f"{source}: format_version {version!r} is not a format version (this ember reads {readable})")


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
    except RecursionError:
        raise ArtifactError(f"{path}: not a manifest (JSON nested too deeply)") from None
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
    """The check of every load, before anything is mapped or loaded: each file the manifest lists exists and has
    its recorded size (no hashing), and every file the runtime opens is one the manifest lists."""
    folder = Path(folder)
    if manifest.files:
        opened = [manifest.library]
        if manifest.weights == WEIGHTS_PACKED:
            files = sorted({p.file for p in manifest.params if p.file})
            tp = manifest.tensor_parallel
            opened += files if tp is None else [tp.shard_file(r, f) for r in range(tp.shards) for f in files]
        if manifest.tokenizer is not None:
            opened.append(manifest.tokenizer.file)
        for rel in opened:
            if rel not in manifest.files:
                raise ArtifactError(f"{folder}: {rel} is not listed in the manifest's files (it cannot be checked)")
    for rel in manifest.files:
        path = folder / rel
        if not path.is_file():
            raise ArtifactError(f"{folder}: {rel} is listed in the manifest but missing")
        expected = manifest.sizes.get(rel)
        if expected is not None and (found := path.stat().st_size) != expected:
            raise ArtifactError(
                f"{folder}: {rel} has {found} bytes, the manifest says {expected} (truncated or replaced)"
            )


# (bytes hashed so far, bytes to hash in all, the file being hashed)
HashProgress = Callable[[int, int, str], None]
HASH_CHUNK = 4 << 20


def verify_files(folder: str | os.PathLike, manifest: Manifest, progress: HashProgress | None = None) -> None:
    """The full check (`--check`): sizes, then every file's sha256, streamed in 4 MiB blocks; `progress` is told
    the bytes done after each block."""
    folder = Path(folder)
    check_files(folder, manifest)
    total = sum((folder / rel).stat().st_size for rel in manifest.files)
    done = 0
    for rel, expected in manifest.files.items():
        digest = hashlib.sha256()
        with open(folder / rel, "rb") as handle:
            while block := handle.read(HASH_CHUNK):
                digest.update(block)
                done += len(block)
                if progress is not None:
                    progress(done, total, rel)
        if digest.hexdigest() != expected:
            raise ArtifactError(f"{folder}: {rel} does not match its sha256 in the manifest (corrupt or edited)")


def process_umask() -> int:
    """This process's umask, read without changing it where Linux tells it (/proc), else by setting and
    restoring it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_umask(folder: Path) -> None:
    """Modes as a plain `cp` would give them: files 0666 and folders 0777 less the umask (mkdtemp makes folders
    0700 and safetensors' writer files 0600, which a service account the artifact is deployed to cannot read);
    executable files (model.so) keep their execute bits."""
    mask = process_umask()
    os.chmod(folder, 0o777 & ~mask)
    for path in folder.rglob("*"):
        if path.is_symlink():
            continue
        if path.is_dir():
            os.chmod(path, 0o777 & ~mask)
        else:
            executable = path.stat().st_mode & 0o100
            os.chmod(path, (0o777 if executable else 0o666) & ~mask)


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

    Crash safety: the writer holds an exclusive lock (`.<name>.lock` beside the destination, flock(2), so the
    kernel drops it when the process dies, even by SIGKILL) from entry to the end. A second writer of the same
    destination is refused at once, naming the first one's pid; one that gets the lock knows that every
    `.<name>.tmp-*` / `.<name>.old-*` folder beside the destination is a dead writer's and deletes it.
    """

    def __init__(self, destination: str | os.PathLike, *, replace: bool = False, label: str = "{output}") -> None:
        self.given = destination
        self.destination = Path(destination).absolute()
        self.replace = replace
        self.label = label
        self._tmp: Path | None = None
        self._lock: DestinationLock | None = None

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
            self._lock = DestinationLock.acquire(self.destination)
            remove_stale_temporaries(parent, only=self.destination.name)
            remove_stale_temporaries(parent)  # other names' leftovers whose writers are gone
            self._tmp = Path(tempfile.mkdtemp(prefix=f".{self.destination.name}.tmp-", dir=parent))
            _ACTIVE.add(self)
        except OSError as err:
            self._release()
            raise ArtifactError(f"{parent}: cannot write there ({err.strerror or err})") from None
        except BaseException:
            self._release()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.abandon()

    def abandon(self) -> None:
        """Delete the temporary folder (if not committed) and give the lock up."""
        try:
            if self._tmp is not None and self._tmp.exists():
                shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
        finally:
            self._release()

    def _release(self) -> None:
        _ACTIVE.discard(self)
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def commit(self, manifest: Manifest) -> Path:
        files = sorted(p for p in self.path.rglob("*") if p.is_file() and p.name != MANIFEST_FILE)
        manifest.files = {str(p.relative_to(self.path)): sha256_file(p) for p in files}
        manifest.sizes = {str(p.relative_to(self.path)): p.stat().st_size for p in files}
        manifest.manifest_sha256 = manifest_digest(json.loads(manifest.to_json()))
        (self.path / MANIFEST_FILE).write_text(manifest.to_json())
        apply_umask(self.path)
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


_ACTIVE: set[ArtifactWriter] = set()


def abandon_active_writers() -> None:
    """For a signal handler that is about to end the process: every open writer's temporary folder deleted and its
    lock given up (the entry point's SIGTERM handler calls this, then exits)."""
    for writer in list(_ACTIVE):
        writer.abandon()


LOCK_SUFFIX = ".lock"
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?:tmp-[^/]+|old-[^/]+|lock)$")


class DestinationLock:
    """An exclusive flock on `.<name>.lock` beside a destination, held by one writer at a time. The file is
    unlinked before it is unlocked; a writer that locked a file which is no longer the one at that path (unlinked
    by the writer before it) tries again, so two writers never both hold it."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self.fd = fd

    @classmethod
    def acquire(cls, destination: Path) -> "DestinationLock":
        lock = cls.try_acquire(destination)
        if lock is None:
            path = destination.with_name(f".{destination.name}{LOCK_SUFFIX}")
            try:
                holder = path.read_text().strip()
            except OSError:
                holder = ""
            who = f" (pid {holder})" if holder.isdigit() else ""
            raise ArtifactError(f"{destination}: another ember process{who} is writing it right now; wait for it "
                                "to finish, or choose another output folder")
        return lock

    @classmethod
    def try_acquire(cls, destination: Path) -> "DestinationLock | None":
        import fcntl

        path = destination.with_name(f".{destination.name}{LOCK_SUFFIX}")
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return None
            except BaseException:
                os.close(fd)
                raise
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(path))
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                return cls(path, fd)
            os.close(fd)  # we locked a file its last holder had unlinked: take the new one

    def release(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        os.close(self.fd)


def remove_stale_temporaries(parent: Path, only: str | None = None) -> list[Path]:
    """Delete `.<name>.tmp-*` and `.<name>.old-*` folders (and `.<name>.lock` files) in `parent` whose writer is
    gone (nobody holds `.<name>.lock`): what a compile killed by SIGKILL left behind. `only`: the one name whose
    lock the caller holds already. Returns the folders deleted."""
    by_name: dict[str, list[Path]] = {}
    try:
        entries = list(parent.iterdir())
    except OSError:
        return []
    for entry in entries:
        match = _TEMPORARY.match(entry.name)
        if match and not entry.is_symlink() and (entry.is_dir() or entry.name.endswith(LOCK_SUFFIX)):
            by_name.setdefault(match.group("name"), []).append(entry)
    removed: list[Path] = []
    for name, folders in sorted(by_name.items()):
        if only is not None and name != only:
            continue
        lock = None if only is not None else DestinationLock.try_acquire(parent / name)
        if only is None and lock is None:
            continue  # a live writer's
        try:
            for folder in folders:
                if folder.name.endswith(LOCK_SUFFIX):
                    continue  # a dead writer's lock file: releasing the lock we just took unlinks it
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder)
        finally:
            if lock is not None:
                lock.release()
    return removed


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
