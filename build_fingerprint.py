"""The build fingerprint recorded in the manifest (`BuildInfo`): what a build read, with which options and tools.

Two builds with the same fingerprint are expected to be byte-identical (tests/e2e/test_reproducible.py checks it).
Inputs are named by their file name in the model source (never by an absolute path, which would make a copy of
the same model look different), hashed in full, streamed.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from .runtime.artifact import HASH_CHUNK, BuildInfo

# files of a Hugging Face folder that a compile reads (frontend/source.py, frontend/importers/safetensors.py)
HF_INPUTS = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
             "chat_template.jinja", "model.safetensors.index.json")
# environment variables that change what a build produces (targets/)
BUILD_ENV = re.compile(r"^(EMBER_CPU_MCPU|EMBER_CUDA_[A-Z0-9_]+|EMBER_DEVICE_SAMPLER|EMBER_PDL_CUH|EMBER_TP_COLLECTIVES|CC)$")


def input_files(model_path: str | None, weights_dir: str | None) -> dict[str, Path]:
    """name -> file, for every file the compile reads: a GGUF file, or a folder's config, tokenizer and
    safetensors files (`--weights DIR`'s under `weights/`)."""
    found: dict[str, Path] = {}

    def add_folder(folder: Path, prefix: str) -> None:
        names = [n for n in HF_INPUTS if (folder / n).is_file()]
        names += sorted(p.name for p in folder.glob("*.safetensors") if p.is_file())
        for name in names:
            found[prefix + name] = folder / name

    if model_path:
        path = Path(model_path)
        if path.is_file():
            found[path.name] = path
            if path.suffix.lower() == ".onnx":  # its external data, and the config/tokenizer beside it
                from .frontend.importers.onnx_graph import external_files

                found.update({p.name: p for p in external_files(path)})
                found.update({n: path.parent / n for n in HF_INPUTS if (path.parent / n).is_file()})
        elif path.is_dir():
            add_folder(path, "")
    if weights_dir:
        add_folder(Path(weights_dir), "weights/")
    return found


def sha256_streamed(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(HASH_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def build_info(*, files: dict[str, Path], config: dict[str, Any], preset: str | None, options: dict[str, Any],
               target_kind: str, cross: bool, versions: dict[str, str]) -> BuildInfo:
    inputs = {name: sha256_streamed(path) for name, path in sorted(files.items())}
    inputs["config"] = hashlib.sha256(_canonical(config).encode()).hexdigest()
    if preset is not None:
        inputs["preset"] = preset
    options = dict(options)
    options["env"] = {k: v for k, v in sorted(os.environ.items()) if BUILD_ENV.match(k)}
    tools = toolchain(target_kind, cross)
    return BuildInfo(fingerprint=build_fingerprint(inputs, options, tools, versions), inputs=inputs,
                     options=options, tools=tools)


def build_fingerprint(inputs: dict[str, str], options: dict[str, Any], tools: dict[str, str],
                      versions: dict[str, str]) -> str:
    body = {"inputs": inputs, "options": options, "tools": tools, "versions": versions,
            "python": f"{sys.version_info.major}.{sys.version_info.minor}"}
    return hashlib.sha256(_canonical(body).encode()).hexdigest()


def toolchain(target_kind: str, cross: bool) -> dict[str, str]:
    """The compilers that make native code for this target: nvcc for cuda, the C compiler for the native cpu
    kernels, zig for cross builds (metal's host code, cpu:aarch64)."""
    tools: dict[str, str] = {}
    if target_kind == "cuda":
        tools["nvcc"] = _version_line(shutil.which("nvcc") or "nvcc", "release")
    if target_kind == "cpu" and not cross:
        from .targets.cpu.native import compiler

        tools["cc"] = _version_line(compiler(), "")
    if cross or target_kind == "metal":
        from importlib.metadata import PackageNotFoundError, version

        try:
            tools["zig"] = "ziglang " + version("ziglang")
        except PackageNotFoundError:
            tools["zig"] = "unknown"
    return tools


@functools.lru_cache(maxsize=None)
def _version_line(program: str, marker: str) -> str:
    """The first line of `program --version` that holds `marker` (the first line for ""); "unknown" if none."""
    try:
        out = subprocess.run([program, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    lines = [ln.strip() for ln in out.splitlines() if ln.strip() and marker in ln]
    return lines[0] if lines else "unknown"


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


__all__ = ["build_fingerprint", "build_info", "input_files"]
