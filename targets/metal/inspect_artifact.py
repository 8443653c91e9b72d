"""The static checks of a metal artifact, rerun on the shipped files: `python -m ember.targets.metal.inspect_artifact
ARTIFACT [--no-download]` prints the Mach-O report and the MSL check of every kernel in its model.dylib; exit 1 if
either fails. (The compile runs the same checks before it writes the artifact.)"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from ...errors import EmberError


def launched_functions(kernels: dict[str, str]) -> list[str]:
    """Host functions that launch the kernels (`<f>_kernel[_N]` is launched by `<f>`): entry points the VM calls."""
    return sorted({re.sub(r"_kernel(?:_\d+)?$", "", name) for name in kernels})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--no-download", action="store_true", help="use cached macOS wheels only")
    args = parser.parse_args(argv)
    from .library_source import msl_from_dylib
    from .limits import msl_limits
    from .macho_check import check_dylib
    from .macos_wheels import MacosWheelsUnavailable, runtime_exports
    from .msl_check import check_msl

    try:
        manifest = json.loads((args.artifact / "manifest.json").read_text())
        library = args.artifact / manifest["library"]
        kernels = msl_from_dylib(library)
        try:
            exports = runtime_exports(download=not args.no_download)
        except MacosWheelsUnavailable as err:
            print(f"note: the TVM symbols are unchecked ({err})")
            exports = None
        macho = check_dylib(library, launched_functions(kernels), exports)
        syntax = check_msl(kernels)
    except (OSError, KeyError, ValueError, EmberError) as err:
        print(f"error: {args.artifact}: {err}", file=sys.stderr)
        return 1
    print(macho.summary())
    print(syntax.summary())
    limits = msl_limits(kernels)
    print(f"Metal limits: largest threadgroup memory {limits.max_threadgroup_bytes} bytes; "
          f"{len(limits.problems(32768))} problem(s)")
    return 0 if macho.ok and syntax.ok and not limits.problems(32768) else 1


if __name__ == "__main__":
    sys.exit(main())
