#!/usr/bin/env python3
"""Make the runtime-only TVM subset (tvm-core.md §5) for a GPU box, e.g. `.carry/tvm_rt/`.

    python tools/make_runtime_subset.py [OUT_DIR] [--python-version 3.12]

Downloads the pinned wheels (pip download, manylinux x86-64, for the target Python) into a cache,
unpacks them into OUT_DIR without the compiler library, C++ sources/headers or bytecode, and
writes a stamp; a second run with the same pins does nothing. Use it with `PYTHONPATH=OUT_DIR`.
The target box needs numpy, the CUDA 13 runtime (libcudart.so.13) and a driver.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

# typing_extensions: tvm_ffi imports it; GPU boxes with torch have it, bare ones do not.
PINS = ("apache-tvm==0.27.0.post1", "apache-tvm-ffi==0.1.14.post1", "ml_dtypes==0.6.0", "typing_extensions==4.16.0")
PLATFORM = "manylinux_2_28_x86_64"
STAMP = ".ember-runtime-subset.json"
# Runtime-only `import tvm` still imports all of tvm's Python (ir, script, tirx, te, target...): keep it. What is
# dropped (the compiler library, sources, headers, tests) is `ember bundle`'s rule.
from ember.bundle import DROP_DIRS, DROP_FILES, dropped as _dropped  # noqa: E402


def _download(wheel_dir: Path, python_version: str) -> list[Path]:
    wheel_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--python-version", python_version, "--platform", PLATFORM, "-d", str(wheel_dir), *PINS]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    wheels = []
    for pin in PINS:
        project, version = pin.split("==")
        prefix = f"{project.replace('-', '_')}-{version}-"
        tag = "py3-none" if project in ("apache-tvm", "typing_extensions") else f"cp{python_version.replace('.', '')}"
        found = sorted(p for p in wheel_dir.glob(f"{prefix}*.whl") if tag in p.name)
        if not found:
            raise SystemExit(f"make_runtime_subset: no {tag} wheel for {pin} in {wheel_dir}")
        wheels.append(found[-1])
    return wheels


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def make_subset(out: Path, python_version: str, wheel_dir: Path) -> Path:
    """Build (or keep, if up to date) the subset at `out`; return `out`."""
    stamp = {"pins": list(PINS), "python": python_version, "platform": PLATFORM, "drop": DROP_DIRS,
             "drop_files": list(DROP_FILES)}
    stamp = json.loads(json.dumps(stamp))  # tuples -> lists, to compare with the stored JSON
    stamp_path = out / STAMP
    if stamp_path.is_file() and json.loads(stamp_path.read_text()) == stamp:
        print(f"{out}: up to date ({_size(out) / 2**20:.1f} MiB)")
        return out
    wheels = _download(wheel_dir, python_version)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as zf:
            for info in zf.infolist():
                if not _dropped(info.filename):
                    zf.extract(info, tmp)
                    mode = info.external_attr >> 16
                    if mode:
                        os.chmod(tmp / info.filename, mode & 0o777)
    (tmp / STAMP).write_text(json.dumps(stamp, indent=1) + "\n")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    print(f"{out}: built from {', '.join(w.name for w in wheels)} ({_size(out) / 2**20:.1f} MiB)")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", nargs="?", default=".carry/tvm_rt", help="subset folder (default .carry/tvm_rt)")
    parser.add_argument("--python-version", default="3.12", help="target Python (default 3.12)")
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ember" / "wheels"
    parser.add_argument("--wheel-dir", default=str(cache), help=f"wheel cache (default {cache})")
    args = parser.parse_args()
    make_subset(Path(args.out).resolve(), args.python_version, Path(args.wheel_dir))


if __name__ == "__main__":
    main()
