#!/usr/bin/env python3
"""A Linux arm64 Python with TVM's runtime, run under qemu-user: where `cpu:aarch64` artifacts are tested.

    python tools/aarch64_sysroot.py                   # build (or keep) the sysroot; print where it is
    python tools/aarch64_sysroot.py run -- ARGS...    # the arm64 python3.11 with ARGS, e.g.
    python tools/aarch64_sysroot.py run -- -m ember.cli run compiled/smollm2-135m-q4f16_1-cpu-aarch64 --prompt Hi

The sysroot (~/.cache/ember/aarch64-sysroot, or $XDG_CACHE_HOME/ember/...) is built once per machine:
- `root/`: Debian's arm64 packages of python3.11 and the C/C++ libraries it and TVM need, unpacked with
  `dpkg-deb -x` (nothing is installed). apt reads the machine's own sources with a private state folder
  (`apt/`, APT::Architecture=arm64), so no `dpkg --add-architecture` is needed and the system is left as it is.
- `site/`: the manylinux aarch64 wheels, unpacked: apache-tvm without its compiler library, apache-tvm-ffi,
  numpy, ml_dtypes, typing_extensions, and what ember's runtime imports (tokenizers, jinja2, markupsafe, click),
  at the versions installed here (targets/runtime_wheels.py downloads them with pip into its cache).
- `stamp.json`: what was built; a second run with the same package lists does nothing.

Programs run as `qemu-aarch64 -cpu cortex-a72 -L root root/usr/bin/python3.11 -S ...` (-S: no site, so only
PYTHONPATH = this checkout's ember + site/ and the arm64 stdlib are importable). cortex-a72 (Raspberry Pi 4) is
ARMv8.0-A: an artifact that needed a later extension would stop with SIGILL. EMBER_QEMU_CPU picks another.

Needs: qemu-user (`apt-get install -y qemu-user`), apt-get and dpkg-deb (Debian or a derivative whose sources
carry arm64 packages of python3.11, e.g. Debian 12), pip access to the wheels once.
"""
from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

from ember.errors import EmberError
from ember.targets.runtime_wheels import Pin, pins, runtime_wheels

REPO = Path(__file__).resolve().parents[1]  # the ember package (the repository root is the package)

PLATFORM = "manylinux_2_28_aarch64"
PYTHON = "3.11"
QEMU = "qemu-aarch64"
QEMU_CPU_ENV = "EMBER_QEMU_CPU"
DEFAULT_QEMU_CPU = "cortex-a72"
INSTALL_HINT = "apt-get install -y qemu-user"
# Debian 12 arm64: the interpreter, its stdlib and the shared libraries python3.11, numpy and TVM load
DEBS = ("python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib", "libc6", "libgcc-s1", "libstdc++6",
        "zlib1g", "libexpat1", "libffi8", "libssl3", "libbz2-1.0", "liblzma5", "libuuid1", "libcrypt1")
# runtime Python packages beside TVM's two, at the versions installed in this environment
RUNTIME_PACKAGES = ("numpy", "ml_dtypes", "typing_extensions", "tokenizers", "jinja2", "markupsafe", "click")
# apache-tvm's wheel, less what a runtime-only process never opens (the compiler library is 240 MB)
DROP_PREFIXES = ("tvm/lib/libtvm_compiler.so", "tvm/3rdparty/", "tvm/include/", "tvm/src/", "tvm_ffi/include/",
                 "tvm_ffi/src/", "tvm_ffi/3rdparty/")
FORMAT = 1


class SysrootError(SystemExit):
    """One line for the user (the tool's only failure mode)."""

    def __init__(self, message: str) -> None:
        super().__init__(f"aarch64_sysroot: {message}")


def cache_root() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "ember" / "aarch64-sysroot"


@dataclass(frozen=True)
class Sysroot:
    path: Path

    @property
    def root(self) -> Path:
        return self.path / "root"

    @property
    def site(self) -> Path:
        return self.path / "site"

    @property
    def python(self) -> Path:
        return self.root / "usr" / "bin" / f"python{PYTHON}"

    def command(self, args: Sequence[str]) -> list[str]:
        """argv of the arm64 python with `args` under qemu."""
        qemu = shutil.which(QEMU)
        if qemu is None:
            raise SysrootError(f"{QEMU} not found: install qemu-user ({INSTALL_HINT})")
        cpu = os.environ.get(QEMU_CPU_ENV) or DEFAULT_QEMU_CPU
        return [qemu, "-cpu", cpu, "-L", str(self.root), str(self.python), "-S", *args]

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """The environment for `command`: this checkout's ember and the wheels on PYTHONPATH, bytecode cached in
        the sysroot, nothing of the host's Python or library paths."""
        env = {k: v for k, v in (os.environ if base is None else base).items()
               if not k.startswith(("PYTHON", "LD_", "VIRTUAL_ENV", "CONDA"))}
        env.update(PYTHONPATH=f"{ember_parent(self.path)}{os.pathsep}{self.site}",
                   PYTHONPYCACHEPREFIX=str(self.path / "pycache"), OPENBLAS_NUM_THREADS="1",
                   PYTHONNOUSERSITE="1")
        return env

    def run(self, args: Sequence[str], **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(args), env=self.env(kwargs.pop("env", None)), **kwargs)


def ember_parent(cache: Path) -> Path:
    """A folder holding `ember` -> this checkout (the package is the repository root), one per checkout."""
    folder = cache / "src" / hashlib.sha256(str(REPO).encode()).hexdigest()[:12]
    link = folder / "ember"
    if not link.is_symlink():
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".ember.{os.getpid()}"
        tmp.symlink_to(REPO, target_is_directory=True)
        os.replace(tmp, link)
    return folder


def _requirements() -> list[Pin]:
    return pins() + [Pin(name, version(name)) for name in RUNTIME_PACKAGES]


def _stamp() -> dict:
    return {"format": FORMAT, "debs": list(DEBS), "wheels": [str(p) for p in _requirements()],
            "drop": list(DROP_PREFIXES)}


def ensure_sysroot(path: Path | None = None, quiet: bool = False) -> Sysroot:
    """The sysroot at `path` (default cache_root()), built if missing or stale; SysrootError if it cannot be."""
    sysroot = Sysroot(path or cache_root())
    if shutil.which(QEMU) is None:
        raise SysrootError(f"{QEMU} not found: install qemu-user ({INSTALL_HINT})")
    stamp = _stamp()
    stamp_file = sysroot.path / "stamp.json"
    sysroot.path.mkdir(parents=True, exist_ok=True)
    with open(sysroot.path / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # pytest workers and CI jobs build it once
        if stamp_file.is_file() and json.loads(stamp_file.read_text()) == stamp and sysroot.python.is_file():
            return sysroot
        say = (lambda _m: None) if quiet else (lambda m: print(f"aarch64_sysroot: {m}", file=sys.stderr))
        for folder in (sysroot.root, sysroot.site, sysroot.path / "pycache"):
            shutil.rmtree(folder, ignore_errors=True)
        say(f"downloading Debian arm64 packages ({len(DEBS)}) into {sysroot.path / 'apt'}")
        for deb in _download_debs(sysroot.path / "apt"):
            _unpack_deb(deb, sysroot.root)
        say(f"unpacking the {PLATFORM} wheels into {sysroot.site}")
        try:
            wheels = runtime_wheels(PLATFORM, PYTHON, _requirements())
        except EmberError as err:
            raise SysrootError(str(err)) from None
        for wheel in wheels:
            _unpack_wheel(wheel, sysroot.site)
        if not sysroot.python.is_file():
            raise SysrootError(f"the packages hold no {sysroot.python}")
        done = sysroot.run(["-c", "import numpy, tvm_ffi; print(numpy.__version__)"], capture_output=True, text=True)
        if done.returncode != 0:
            tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise SysrootError(f"the arm64 python does not start under {QEMU}: {tail}")
        stamp_file.write_text(json.dumps(stamp, indent=1) + "\n")
        say(f"ready: {sysroot.path}")
    return sysroot


def _apt_options(state: Path) -> list[str]:
    return ["-o", "APT::Architecture=arm64", "-o", "APT::Architectures::=arm64",
            "-o", f"Dir::State::Lists={state / 'lists'}", "-o", f"Dir::Cache={state / 'cache'}",
            "-o", "Dir::State::status=/dev/null", "-o", "Debug::NoLocking=1", "-q"]


def _download_debs(state: Path) -> list[Path]:
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise SysrootError("apt-get and dpkg-deb are needed (a Debian machine): they fetch the arm64 python3.11")
    for sub in ("lists/partial", "cache/archives/partial", "debs"):
        (state / sub).mkdir(parents=True, exist_ok=True)
    _apt(["update"], state, "apt-get update (arm64 package lists)")
    debs = state / "debs"
    for old in debs.glob("*.deb"):
        old.unlink()
    _apt(["download", *(f"{name}:arm64" for name in DEBS)], state, "apt-get download", cwd=debs)
    found = sorted(debs.glob("*.deb"))
    if len(found) < len(DEBS):
        raise SysrootError(f"apt-get download gave {len(found)} of {len(DEBS)} packages in {debs}")
    return found


def _apt(args: list[str], state: Path, what: str, cwd: Path | None = None) -> None:
    done = subprocess.run(["apt-get", *_apt_options(state), *args], capture_output=True, text=True, cwd=cwd)
    if done.returncode != 0:
        lines = [ln for ln in done.stderr.splitlines() if ln.startswith("E:")] or done.stderr.splitlines()[-1:]
        raise SysrootError(f"{what} failed: {(lines or ['no output'])[0].strip()}")


def _unpack_deb(deb: Path, root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], capture_output=True, text=True)
    if done.returncode != 0:
        raise SysrootError(f"dpkg-deb -x {deb.name} failed: {done.stderr.strip()[-300:]}")


def _unpack_wheel(wheel: Path, site: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        for info in zf.infolist():
            if info.filename.startswith(DROP_PREFIXES) or "/__pycache__/" in info.filename:
                continue
            zf.extract(info, site)
            mode = info.external_attr >> 16
            if mode:
                os.chmod(site / info.filename, mode & 0o777)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--path", type=Path, default=None, help=f"sysroot folder (default {cache_root()})")
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("run", help="run the arm64 python under qemu with the given arguments")
    run.add_argument("args", nargs=argparse.REMAINDER)
    opts = parser.parse_args(argv)
    sysroot = ensure_sysroot(opts.path)
    if opts.command == "run":
        args = opts.args[1:] if opts.args[:1] == ["--"] else opts.args
        return sysroot.run(args).returncode
    print(sysroot.path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
