"""`ember bundle ARTIFACT -o DIR`: what a device needs to run an artifact, and nothing else.

    DIR/bin/ember        launcher: `DIR/bin/ember run DIR/artifact -p "..."` (also chat, verify, bench, serve)
    DIR/artifact/        the artifact (hard links where the file system allows, else copies)
    DIR/lib/ember/       ember's runtime modules (no frontend, passes or targets)
    DIR/lib/...          TVM's runtime (the wheel without libtvm_compiler.so, sources or headers), tvm-ffi, and the
                         runtime's own dependencies (numpy, tokenizers, jinja2, click, rich, ...), copied from this
                         environment's installed distributions
    DIR/BUNDLE.json      what is in it: sizes, the Python it needs, the artifact

The launcher runs `python3 -S` (no site-packages: only the bundle and the standard library) with
TVM_USE_RUNTIME_LIB=1, and refuses another Python than the one the compiled dependencies were taken from. The
device needs that Python and, for cuda artifacts, the driver and libcudart.so.13; nothing else.

Bundles are made for the machine ember runs on (its platform and Python): the dependencies are this
environment's own files. An artifact for another platform (metal, cpu:aarch64) is refused with a message.
"""
from __future__ import annotations

import compileall
import importlib.metadata as metadata
import json
import os
import platform
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import EmberError
from .runtime.output_rules import check_destination

BUNDLE_FILE = "BUNDLE.json"
# the runtime's third-party imports (ember run/chat/verify/bench; serve adds SERVER_DISTRIBUTIONS)
DISTRIBUTIONS = ("apache-tvm", "apache-tvm-ffi", "ml_dtypes", "typing_extensions", "numpy", "tokenizers", "jinja2",
                 "markupsafe", "click", "rich", "markdown-it-py", "mdurl", "pygments")
SERVER_DISTRIBUTIONS = ("starlette", "uvicorn", "h11", "anyio", "idna", "sniffio", "sse-starlette",
                        "prometheus_client", "llguidance", "jsonschema", "jsonschema-specifications", "referencing",
                        "rpds-py", "attrs")
# What the runtime never loads: TVM's compiler side, sources and headers, test suites, numpy's f2py (also
# tools/make_runtime_subset.py's rule)
DROP_DIRS = {
    "tvm": ("3rdparty", "include", "src", "web", "cmake", "lib64"),
    "tvm_ffi": ("3rdparty", "include", "src", "cython", "share"),
    "numpy": ("f2py",),
}
DROP_FILES = ("tvm/lib/libtvm_compiler.so",)
DROP_PREFIXES = ("numpy/_core/include/",)
EMBER_FILES = ("__init__.py", "errors.py")  # the top-level modules the runtime imports
HOST_TARGETS = {"x86_64": ("cpu", "cuda")}  # machine -> artifact target kinds a bundle made here can run


class BundleError(EmberError):
    """The bundle cannot be made; the message is one line naming the argument or file."""


def dropped(name: str) -> bool:
    """Whether a file of an installed distribution (path relative to site-packages) stays out of the runtime."""
    parts = name.split("/")
    if "__pycache__" in parts or "tests" in parts[1:-1] or name.endswith(".pyc") or name in DROP_FILES:
        return True
    return name.startswith(DROP_PREFIXES) or len(parts) > 1 and parts[1] in DROP_DIRS.get(parts[0], ())


@dataclass
class BundleReport:
    path: Path
    python: str
    files: int
    runtime_bytes: int  # lib/ (ember's runtime, TVM's runtime, dependencies)
    artifact_bytes: int

    def summary(self) -> str:
        mib = 1 << 20
        return (f"wrote {self.path}: runtime {self.runtime_bytes / mib:.1f} MiB ({self.files} files, Python "
                f"{self.python}), artifact {self.artifact_bytes / mib:.1f} MiB; run it with "
                f"{self.path / 'bin' / 'ember'} run {self.path / 'artifact'} -p \"...\"")


def make_bundle(artifact: str | os.PathLike, output: str | os.PathLike, *, server: bool = False) -> BundleReport:
    from .runtime.artifact import read_manifest

    source = Path(artifact)
    manifest = read_manifest(source)  # a one-line ArtifactError for anything that is not an intact artifact
    machine = platform.machine()
    kinds = HOST_TARGETS.get(machine, ())
    cross = manifest.target.kind == "cpu" and manifest.target.archs and manifest.target.archs[0] != machine
    if manifest.target.kind not in kinds or cross:
        raise BundleError(f"{source}: a {manifest.target.kind} artifact for {', '.join(manifest.target.archs)}; "
                          f"bundles are made for this machine ({machine}: {', '.join(kinds) or 'none'}) only")
    destination = check_destination(output, replace=False, label="--output")
    names = DISTRIBUTIONS + (SERVER_DISTRIBUTIONS if server else ())
    dists = []
    for name in names:
        try:
            dists.append(metadata.distribution(name))
        except metadata.PackageNotFoundError:
            if name in SERVER_DISTRIBUTIONS:
                raise BundleError(f"--server: {name} is not installed here (pip install -e '.[serve]')") from None
            raise BundleError(f"{name} is not installed here: the bundle copies this environment's runtime") from None
    destination.path.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{destination.path.name}.tmp-", dir=destination.path.parent))
    try:
        lib = work / "lib"
        files = _copy_ember(lib / "ember") + sum(_copy_distribution(d, lib) for d in dists)
        _link_tree(source, work / "artifact")
        compileall.compile_dir(str(lib), quiet=1, workers=os.cpu_count() or 1)  # bytecode now: a faster first start
        python = f"{sys.version_info.major}.{sys.version_info.minor}"
        _write_launcher(work / "bin" / "ember", python)
        report = BundleReport(destination.path, python, files, _size(lib), _size(work / "artifact"))
        (work / BUNDLE_FILE).write_text(json.dumps({
            "format": 1, "python": python, "machine": machine, "artifact": manifest.name,
            "target": manifest.target.kind, "runtime_bytes": report.runtime_bytes,
            "artifact_bytes": report.artifact_bytes, "files": files,
            "distributions": {d.metadata["Name"]: d.version for d in dists}}, indent=1) + "\n")
        if destination.path.exists():
            destination.path.rmdir()  # check_destination allowed it only empty
        os.replace(work, destination.path)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return report


def _copy_ember(out: Path) -> int:
    package = Path(__file__).resolve().parent
    count = 0
    for name in EMBER_FILES:
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy2(package / name, out / name)
        count += 1
    for path in sorted((package / "runtime").rglob("*.py")):
        target = out / path.relative_to(package)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
        count += 1
    return count


def _copy_distribution(dist: metadata.Distribution, lib: Path) -> int:
    count = 0
    for entry in dist.files or []:
        rel = str(entry)
        if rel.startswith("..") or rel.startswith("/") or dropped(rel):
            continue  # scripts outside site-packages, the compiler side
        path = Path(dist.locate_file(entry))
        if not path.is_file():
            continue
        target = lib / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
        count += 1
    return count


def _link_tree(source: Path, out: Path) -> None:
    """The artifact folder, file by file: hard links (the weights are GBs) where the file system allows."""
    for path in sorted(source.rglob("*")):
        target = out / path.relative_to(source)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, target)
        except OSError:
            shutil.copy2(path, target)


LAUNCHER = """#!/bin/sh
# ember runtime bundle (BUNDLE.json): the artifact's runtime, without site-packages.
here=$(cd "$(dirname "$0")/.." && pwd)
py=${{EMBER_PYTHON:-python3}}
have=$("$py" -S -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)
if [ "$have" != "{python}" ]; then
  echo "ember bundle: needs Python {python} (its compiled modules are for it);" \
    "$py is ${{have:-missing}} (set EMBER_PYTHON)" >&2
  exit 2
fi
PYTHONPATH="$here/lib" TVM_USE_RUNTIME_LIB=1 exec "$py" -S -m ember.runtime.device_cli "$@"
"""


def _write_launcher(path: Path, python: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(LAUNCHER.format(python=python))
    path.chmod(0o755)


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


__all__ = ["BUNDLE_FILE", "BundleError", "BundleReport", "DROP_DIRS", "DROP_FILES", "dropped", "make_bundle"]
