"""Load an artifact with the TVM runtime only: check it fits the device, load model.so into a VM, load the weights.

Every load checks the manifest's own hash and each file's size; `verify=True` (`--check`) also hashes every file.
Weights are memory-mapped (runtime.shards) and go to the device one tensor at a time, in manifest order, ending up
as the one packed list that every exported function takes last (DESIGN.md). On cpu, TVM's thread pool is sized
to the physical cores first (runtime.threads).
"""
from __future__ import annotations

import os
import platform
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ArtifactError, InputError
from .artifact import (WEIGHTS_NONE, WEIGHTS_PACKED, WEIGHTS_RANDOM, HashProgress, Manifest, ParamInfo, check_files,
                       read_manifest, verify_files)
from .platform_check import check_artifact_os, check_device_os
from .random_weights import DeviceFill, RandomFill, make_random_weights
from .shards import Shard
from .tensor_parallel import HOST_ALL_REDUCE, register_host_collectives
from .threads import configure_cpu_threads
from .weight_arena import WeightArena
from .tvm_import import ensure_device_runtime, import_tvm

# Exported functions ember calls, with their arity (weights included): the contract of DESIGN.md.
REQUIRED_FUNCTIONS = {"create_kv": 5, "prefill": 4, "decode": 3}
OPTIONAL_FUNCTIONS = {"decode1": 3}

_NUMPY_DTYPES = {"float64", "float32", "float16", "int64", "int32", "int16", "int8", "uint64", "uint32", "uint16",
                 "uint8", "bool"}  # (bfloat16 and float8 need ml_dtypes: they keep TVM's own allocation)
_HOST_ARCHS = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}


@dataclass
class LoadedArtifact:
    path: Path
    manifest: Manifest
    device: Any  # tvm.runtime.Device
    vm: Any  # tvm.runtime.vm.VirtualMachine
    params: Any  # tvm_ffi Array of the weights, manifest order

    @property
    def name(self) -> str:
        return self.manifest.name


def parse_device(device: str) -> tuple[str, int]:
    match = re.fullmatch(r"(cpu|cuda|metal)(?::(\d+))?", device.strip().lower())
    if not match:
        raise InputError(f"unknown device {device!r} (use cpu, cuda, cuda:N or metal)")
    return match.group(1), int(match.group(2) or 0)


def load_artifact(
    path: str | os.PathLike,
    device: str = "cpu",
    verify: bool = False,
    weights: Mapping[str, Any] | None = None,
    random_fill: RandomFill | None = None,
    verify_progress: HashProgress | None = None,
    shard: int | None = None,
) -> LoadedArtifact:
    """`shard`: which shard of a tensor-parallel artifact (its own weights; runtime/tensor_parallel.py runs them
    all)."""
    folder = Path(path)
    manifest = read_manifest(folder)
    kind, _ = parse_device(device)
    check_target(manifest, kind)
    _check_shard(manifest, shard)
    # before anything is mapped or dlopen'ed: a truncated model.so would otherwise die of SIGBUS
    if verify:
        verify_files(folder, manifest, verify_progress)
    else:
        check_files(folder, manifest)
    tvm, dev, vm = open_on_device(folder, manifest, device)
    if weights is not None:
        params = weights_from_mapping(manifest, weights, dev)
    elif manifest.weights == WEIGHTS_PACKED:
        params = load_packed_weights(folder, manifest, dev, shard)
    elif manifest.weights == WEIGHTS_RANDOM:
        if random_fill is None and DeviceFill.available(manifest.functions, manifest.params):
            random_fill = DeviceFill(vm)
        if shard is not None:
            from .random_weights import NumpyFill
            from .tensor_parallel import shard_random_fill

            device_fill = random_fill is not None
            random_fill = shard_random_fill(lambda seed: DeviceFill(vm, seed) if device_fill else NumpyFill(seed),
                                            manifest, shard)
        params = make_random_weights(manifest.params, dev, random_fill)
    elif manifest.weights == WEIGHTS_NONE:
        raise InputError(f"artifact {manifest.name} ships no weights; pass weights={{name: array}} to load it")
    else:
        raise ArtifactError(f"artifact {manifest.name}: unknown weights mode {manifest.weights!r}")
    return LoadedArtifact(folder, manifest, dev, vm, tvm.runtime.convert(params))


def _check_shard(manifest: Manifest, shard: int | None) -> None:
    tp = manifest.tensor_parallel
    if tp is None and shard is not None:
        raise InputError(f"artifact {manifest.name} is not split for tensor parallelism: load it without a shard")
    if tp is not None and shard is None:
        raise InputError(f"artifact {manifest.name} is split into {tp.shards} tensor-parallel shards: run it on "
                         f"{tp.shards} devices (--devices, ember.runtime.tensor_parallel), or load one with shard=R")
    if tp is not None and not (isinstance(shard, int) and 0 <= shard < tp.shards):
        raise InputError(f"shard {shard!r}: artifact {manifest.name} has shards 0..{tp.shards - 1}")
    if tp is not None and tp.collectives.get("all_reduce") == HOST_ALL_REDUCE:
        register_host_collectives()  # the VM resolves the packed functions it calls when it loads


def _built_for(manifest: Manifest) -> str:
    detail = ", ".join(manifest.target.archs) or manifest.target.host
    return f"{manifest.target.kind} ({detail})" if detail else manifest.target.kind


def open_on_device(folder: Path, manifest: Manifest, device: str) -> tuple[Any, Any, Any]:
    """(tvm, the device, the library's VM on it): the device kind's runtime loaded (cpu: the thread pool sized
    first), the artifact checked against the device, the library loaded."""
    kind, index = parse_device(device)
    check_target(manifest, kind)
    if kind == "cpu":
        configure_cpu_threads()
    ensure_device_runtime(kind)
    tvm = import_tvm()
    dev = tvm.device(kind, index)
    check_device(manifest, dev, kind, index)
    return tvm, dev, load_vm(folder, manifest, dev)


def check_target(manifest: Manifest, kind: str) -> None:
    """Refuse an artifact built for another system, device kind or host architecture, before loading anything."""
    check_artifact_os(manifest)
    check_device_os(kind)
    if manifest.target.kind != kind:
        raise ArtifactError(f"artifact {manifest.name} was built for {_built_for(manifest)}; it cannot run on {kind}")
    host_arch = artifact_host_arch(manifest)
    machine = _HOST_ARCHS.get(platform.machine().lower())
    if host_arch and machine and host_arch != machine:
        hint = (f" (run it on {_ARCH_MACHINES.get(host_arch, 'an ' + host_arch + ' machine')}, or compile it for "
                f"this one with --target cpu)" if manifest.target.kind == "cpu" else "")
        raise ArtifactError(f"artifact {manifest.name} was built for {_built_for(manifest)}, an {host_arch} host; "
                            f"this machine is {machine}{hint}")


_ARCH_MACHINES = {"aarch64": "a Linux arm64 machine", "x86_64": "a Linux x86-64 machine"}


def artifact_host_arch(manifest: Manifest) -> str | None:
    """The host arch an artifact's library is for: its host triple's arch, else (cpu builds for the build machine
    record no triple) the first of its cpu archs; None when the manifest does not say."""
    if manifest.target.host:
        found = _HOST_ARCHS.get(manifest.target.host.split("-")[0].lower())
        if found:
            return found
    if manifest.target.kind == "cpu" and manifest.target.archs:
        return _HOST_ARCHS.get(manifest.target.archs[0].lower())
    return None


def check_device(manifest: Manifest, dev: Any, kind: str, index: int) -> None:
    if kind == "cpu":
        return
    if not dev.exist:
        raise ArtifactError(f"no {kind} device {index} on this machine")
    if kind == "cuda" and manifest.target.archs:
        major, minor = (int(x) for x in dev.compute_version.split("."))
        if not any(cuda_arch_runs_on(arch, major, minor) for arch in manifest.target.archs):
            raise ArtifactError(
                f"artifact {manifest.name} was built for cuda ({', '.join(manifest.target.archs)}); "
                f"this GPU ({dev.device_name}) is sm_{major}{minor}"
            )


def cuda_arch_runs_on(arch: str, major: int, minor: int) -> bool:
    """SASS for sm_XY runs on sm_XZ with Z >= Y; arch-specific sm_XYa/f only on sm_XY itself."""
    match = re.fullmatch(r"sm_(\d+)(\d)([af]?)", arch)
    if not match:
        return True  # an arch string we do not understand: let the driver decide
    a_major, a_minor, suffix = int(match.group(1)), int(match.group(2)), match.group(3)
    if suffix:
        return (a_major, a_minor) == (major, minor)
    return a_major == major and a_minor <= minor


def load_vm(folder: Path, manifest: Manifest, dev: Any) -> Any:
    tvm = import_tvm()
    from tvm.runtime.vm import VirtualMachine

    lib = folder / manifest.library
    if not lib.is_file():
        raise ArtifactError(f"{folder}: {manifest.library} is missing")
    try:
        vm = VirtualMachine(tvm.runtime.load_module(str(lib)), dev)
    except Exception as err:  # TVM raises its own error types; keep the first line
        raise ArtifactError(f"{lib}: cannot be loaded by this TVM runtime ({_first_line(err)})") from None
    wanted = dict(REQUIRED_FUNCTIONS)
    wanted.update({n: a for n, a in OPTIONAL_FUNCTIONS.items() if n in manifest.functions})
    for name, arity in wanted.items():
        if name not in manifest.functions:
            raise ArtifactError(f"artifact {manifest.name}: the manifest does not list the required function {name}")
        try:
            found = vm._get_function_arity(name)
        except Exception:
            raise ArtifactError(f"{lib}: function {name} is listed in the manifest but not in the library") from None
        if found != arity:
            raise ArtifactError(f"{lib}: function {name} takes {found} arguments, ember's runtime expects {arity}")
    return vm


def library_module(lib: Path) -> Any:
    """The artifact's library as a module, for the packed functions it exports besides the VM's (the NCCL set-up,
    runtime/nccl.py). The dynamic loader hands back the handle the VM's load opened: the same library state."""
    tvm = import_tvm()
    try:
        return tvm.runtime.load_module(str(lib))
    except Exception as err:  # TVM raises its own error types; keep the first line
        raise ArtifactError(f"{lib}: cannot be loaded by this TVM runtime ({_first_line(err)})") from None


def _first_line(err: BaseException) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return lines[-1] if lines else type(err).__name__


def load_packed_weights(folder: Path, manifest: Manifest, dev: Any, shard: int | None = None) -> list[Any]:
    tvm = import_tvm()
    if shard is not None:  # a tensor-parallel shard's files: the same names, in its own folder
        folder = folder / manifest.tensor_parallel.shard_dirs[shard]
    shards: dict[str, Shard] = {}
    sources: list[tuple[ParamInfo, Shard]] = []
    for p in manifest.params:
        if p.file is None:
            raise ArtifactError(f"artifact {manifest.name}: parameter {p.name} has no file in the manifest")
        if p.file not in shards:
            if not (folder / p.file).is_file():
                raise ArtifactError(f"{folder}: {p.file} is missing (it holds {p.name})")
            shards[p.file] = Shard(folder / p.file)
        shard = shards[p.file]
        where = f"{folder / p.file}: tensor {p.name}"
        if p.name not in shard:
            raise ArtifactError(f"{where} is missing")
        dtype, shape = shard.info(p.name)
        _check_tensor(where, p, shape, dtype)
        sources.append((p, shard))
    # on the host: one huge-page arena for every tensor numpy can hold (runtime/weight_arena.py), shared with TVM
    hosted = [i for i, (p, _) in enumerate(sources) if dev.dlpack_device_type() == 1 and p.dtype in _NUMPY_DTYPES]
    arena = WeightArena([(sources[i][0].shape, sources[i][0].dtype) for i in hosted]) if hosted else None
    views = dict(zip(hosted, arena.views)) if arena is not None else {}
    out: list[Any] = []
    for i, (p, shard) in enumerate(sources):
        if i in views:
            np.copyto(views[i], shard.array(p.name))  # one copy, from the map
            out.append(tvm.runtime.from_dlpack(views[i]))
        else:
            out.append(tvm.runtime.empty(p.shape, p.dtype, dev).copyfrom(shard.array(p.name)))
    return out


def weights_from_mapping(manifest: Manifest, weights: Mapping[str, Any], dev: Any) -> list[Any]:
    tvm = import_tvm()
    expected = [p.name for p in manifest.params]
    missing = [n for n in expected if n not in weights]
    extra = sorted(set(weights) - set(expected))
    if missing or extra:
        raise InputError(
            f"weights for {manifest.name} do not match its parameters: missing {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''}, unexpected {extra[:5]}{' ...' if len(extra) > 5 else ''}"
        )
    out = []
    for p in manifest.params:
        value = weights[p.name]
        if isinstance(value, tvm.runtime.Tensor):
            _check_tensor(f"weights[{p.name!r}]", p, list(value.shape), str(value.dtype), error=InputError)
            out.append(value if value.device == dev else tvm.runtime.tensor(value.numpy(), dev))
            continue
        array = np.asarray(value)
        _check_tensor(f"weights[{p.name!r}]", p, list(array.shape), str(array.dtype), error=InputError)
        out.append(tvm.runtime.tensor(np.ascontiguousarray(array), dev))
    return out


def _check_tensor(where: str, p: ParamInfo, shape: list[int], dtype: str, error: type = ArtifactError) -> None:
    if list(shape) != list(p.shape) or dtype != p.dtype:
        raise error(f"{where} has shape {list(shape)} {dtype}, the manifest says {list(p.shape)} {p.dtype}")
