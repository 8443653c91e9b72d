"""Where ember may write a folder: the one rule every command that writes one (artifacts, bundles, converted
weights) goes through, via `ArtifactWriter`.

A destination is written when it
  - does not exist (its parent folders are made), or
  - is an empty folder, or
  - is an ember artifact (see `foreign_entry`) and the caller allows replacing one: `--force`, or the default
    `compiled/<name>-<quant>-<target>` path, which ember itself made.
Anything else that exists is refused, naming it: a file, a symbolic link, a folder holding anything ember did not
write, the current folder or one of its parents (even if it is an artifact).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import ArtifactError

NEW, EMPTY, ARTIFACT = "new", "empty", "artifact"


@dataclass(frozen=True)
class Destination:
    path: Path  # absolute
    state: str  # NEW | EMPTY | ARTIFACT


def foreign_entry(folder: Path) -> str | None:
    """None if `folder` is an ember artifact: a manifest.json ember can read, and nothing but the files it lists
    (and the folders holding them). Otherwise why it is not one, naming the first entry that ember did not write."""
    from .artifact import MANIFEST_FILE, read_manifest

    try:
        listed = set(read_manifest(folder).files) | {MANIFEST_FILE}
    except ArtifactError:
        first = min((p.name for p in folder.iterdir()), default=None)
        return f"it holds {first} and no ember {MANIFEST_FILE}"
    holders = {str(Path(rel).parent) for rel in listed} - {"."}
    holders |= {str(parent) for rel in holders for parent in Path(rel).parents} - {"."}
    for root, dirs, files in os.walk(folder):
        base = Path(root).relative_to(folder)
        for name in sorted(dirs):
            rel = str(base / name)
            if rel not in holders or (Path(root) / name).is_symlink():
                return f"it holds {rel}/, which ember did not write"
        for name in sorted(files):
            if str(base / name) not in listed:
                return f"it holds {base / name}, which ember did not write"
    return None


def check_destination(destination: str | os.PathLike, *, replace: bool, label: str = "{output}") -> Destination:
    """Apply the rule; raise ArtifactError (one line naming the path) when ember must not write there.

    `replace`: an existing ember artifact may be replaced. `label` names the destination in errors (`{output}` is
    spelled `output` in Python and `--output` on the command line; a plain path for defaults)."""
    path = Path(destination).absolute()
    shown = f"{label} {destination}" if label else str(destination)

    def refuse(problem: str) -> ArtifactError:
        return ArtifactError.about(f"{shown}: {problem}")

    if path.is_symlink():
        raise refuse("is a symbolic link; ember writes only real folders (give the path it points to)")
    if not path.exists():
        for parent in path.parents:
            if parent.exists() and not parent.is_dir():
                raise refuse(f"{parent} is not a folder")
        return Destination(path, NEW)
    if not path.is_dir():
        raise refuse("exists and is not a folder; ember replaces only its own artifacts")
    real, cwd = path.resolve(), Path.cwd().resolve()
    if real == cwd or real in cwd.parents:
        raise refuse("is the current folder or holds it; ember never replaces that")
    if not any(path.iterdir()):
        return Destination(path, EMPTY)
    foreign = foreign_entry(path)
    if foreign is not None:
        raise refuse(f"exists and is not an ember artifact ({foreign}); ember replaces only its own artifacts, "
                     "so choose another folder or empty this one")
    if not replace:
        raise refuse("holds an ember artifact already; pass {force} to replace it")
    return Destination(path, ARTIFACT)
