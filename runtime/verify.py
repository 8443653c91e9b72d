"""`ember verify`: is this artifact intact, and does it compute what the compile host computed?

Two checks, in order:
1. files: every file the manifest lists has its size and sha256 (streamed; `progress` is told the bytes done).
2. numerics: the golden outputs recorded at compile time (golden.py; `Manifest.verification`) are recomputed on the
   device: the fixed prompt's logits at every position, then each greedy decode step, fed the golden tokens (with
   `decode1` and again with the symbolic-batch `decode`). Reported: max |logit diff|, the same as a fraction of the
   logit scale (max |golden logit|), top-1 agreement per position and whether the greedy tokens are equal; the
   check passes when every fraction is within the tolerance the manifest records for the compute dtype (and every
   logit is finite). For big models the golden outputs are those of a truncation to a few layers, whose entry points
   (`verify_prefill`, ...) the main library exports: they read only the first layers' weights, so the others are
   allocated but never loaded or filled.
Runtime only: TVM's runtime library, never the compiler (as `ember run`).
"""
from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ArtifactError
from .artifact import WEIGHTS_PACKED, WEIGHTS_RANDOM, Manifest, read_manifest
from .golden_run import PromptRun, artifact_view, read_golden, run_prompt
from .loader import LoadedArtifact, load_packed_weights, open_on_device, parse_device
from .random_weights import DeviceFill
from .tvm_import import import_tvm

Progress = Callable[[int, int, str], None]  # (bytes done, bytes in all, file being hashed)
HASH_CHUNK = 1 << 22

PASS, FAIL, NOT_RECORDED, SKIPPED = "pass", "fail", "not recorded", "skipped"


# -- files -------------------------------------------------------------------------------------------------------
@dataclass
class FilesReport:
    status: str  # pass | fail | skipped
    files: int = 0
    bytes: int = 0
    problems: list[str] = field(default_factory=list)  # one line per bad file, naming it


def check_file_hashes(folder: Path, manifest: Manifest, progress: Progress | None = None) -> FilesReport:
    """Every listed file: present, its recorded size, its recorded sha256. All files are checked (not only up to the
    first problem), hashing streamed in 4 MiB blocks."""
    import hashlib

    problems: list[str] = []
    present: list[tuple[str, str, int]] = []
    for rel, digest in manifest.files.items():
        path = folder / rel
        if not path.is_file():
            problems.append(f"{rel}: missing")
            continue
        size = path.stat().st_size
        expected = manifest.sizes.get(rel)
        if expected is not None and size != expected:
            problems.append(f"{rel}: {size} bytes, the manifest says {expected} (truncated or replaced)")
            continue
        present.append((rel, digest, size))
    total = sum(size for _, _, size in present)
    done = 0
    for rel, digest, size in present:
        h = hashlib.sha256()
        with open(folder / rel, "rb") as handle:
            while block := handle.read(HASH_CHUNK):
                h.update(block)
                done += len(block)
                if progress is not None:
                    progress(done, total, rel)
        if h.hexdigest() != digest:
            problems.append(f"{rel}: does not match its sha256 in the manifest (corrupt or edited)")
    return FilesReport(FAIL if problems else PASS, len(manifest.files), total, problems)


# -- numerics ----------------------------------------------------------------------------------------------------
@dataclass
class Comparison:
    """One function's logits on the device against the golden ones."""

    name: str  # prefill | decode1 | decode
    rows: int
    max_abs_diff: float | None  # None: some logit is not finite
    rel_diff: float | None  # max_abs_diff / logit scale
    top1_agree: int  # rows whose argmax equals the golden argmax
    greedy_equal: bool  # the argmax tokens equal the golden greedy tokens
    finite: bool


@dataclass
class NumericsReport:
    status: str  # pass | fail | not recorded | skipped
    reason: str = ""  # why not recorded / skipped
    layers: int | None = None  # None: the whole model
    model_layers: int | None = None
    prompt_tokens: int = 0
    greedy_steps: int = 0
    compute_dtype: str = ""
    reference: str = ""
    tolerance: float | None = None
    logit_scale: float | None = None
    comparisons: list[Comparison] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class VerifyReport:
    artifact: str
    name: str
    device: str
    files: FilesReport
    numerics: NumericsReport

    @property
    def ok(self) -> bool:
        return self.files.status != FAIL and self.numerics.status != FAIL

    def to_dict(self) -> dict[str, Any]:
        return {"artifact": self.artifact, "name": self.name, "device": self.device, "ok": self.ok,
                "files": dataclasses.asdict(self.files), "numerics": dataclasses.asdict(self.numerics)}


def compare(name: str, ours: np.ndarray, golden: np.ndarray, greedy: list[int], scale: float) -> Comparison:
    """`greedy`: the golden token after each row (the argmax the golden run chose there)."""
    finite = bool(np.isfinite(ours).all())
    diff = float(np.abs(ours.astype(np.float64) - golden).max()) if ours.size and finite else 0.0
    picks = ours.argmax(axis=-1).tolist() if ours.size else []
    agree = sum(int(a == b) for a, b in zip(picks, golden.argmax(axis=-1).tolist()))
    return Comparison(name, int(ours.shape[0]), diff if finite else None,
                      (diff / scale if scale > 0 else diff) if finite else None, agree, picks == list(greedy), finite)


def _load(folder: Path, manifest: Manifest, device: str) -> LoadedArtifact:
    """The library on `device` with the weights the verification reads; weights it does not read (a truncation's
    later layers) are allocated and left uninitialised."""
    tvm, dev, vm = open_on_device(folder, manifest, device)
    info = manifest.verification
    assert info is not None
    missing = [f for f in info.entry_points.values() if f not in manifest.functions]
    if missing:
        raise ArtifactError(f"artifact {manifest.name}: the verification's entry point {missing[0]} is not in its "
                            "functions")
    params = verification_weights(folder, manifest, dev, vm, set(info.params) or None)
    return LoadedArtifact(folder, manifest, dev, vm, tvm.runtime.convert(params))


def verification_weights(folder: Path, manifest: Manifest, dev: Any, vm: Any, needed: set[str] | None = None,
                         order: list[str] | None = None) -> list[Any]:
    """The weights named in `order` (default: manifest order): those in `needed` (None: all) loaded (packed) or made
    by `vm`'s fill functions (random, seeded by manifest index as every load does), the others allocated and left
    uninitialised (a truncation's entry points never read them)."""
    tvm = import_tvm()
    infos = {p.name: p for p in manifest.params}
    names = order if order is not None else list(infos)
    wanted = [infos[n] for n in names if needed is None or n in needed]
    if manifest.weights == WEIGHTS_PACKED:
        loaded = load_packed_weights(folder, dataclasses.replace(manifest, params=wanted), dev)
        by_name = {p.name: t for p, t in zip(wanted, loaded)}
    elif manifest.weights == WEIGHTS_RANDOM:
        if not DeviceFill.available(manifest.functions, wanted):
            raise ArtifactError(f"artifact {manifest.name}: random weights without the library's fill functions "
                                "cannot be verified")
        fill = DeviceFill(vm)
        index = {p.name: i for i, p in enumerate(manifest.params)}
        by_name = {p.name: fill(p, index[p.name], dev) for p in wanted}
    else:
        raise ArtifactError(f"artifact {manifest.name} ships no weights ({manifest.weights!r}): nothing to verify")
    return [by_name[n] if n in by_name else tvm.runtime.empty(infos[n].shape, infos[n].dtype, dev) for n in names]


def verify_numerics(folder: Path, manifest: Manifest, device: str) -> NumericsReport:
    info = manifest.verification
    if info is None:
        why = next((n for n in manifest.notes if n.startswith("golden outputs not recorded")), None)
        return NumericsReport(NOT_RECORDED, reason=why or "this artifact has no golden outputs (compiled by an "
                              "older ember, or without weights)")
    started = time.perf_counter()
    golden = read_golden(folder, manifest)
    report = NumericsReport(PASS, layers=info.layers, model_layers=manifest.kv_cache.num_layers,
                            prompt_tokens=len(info.prompt_ids), greedy_steps=info.greedy_steps,
                            compute_dtype=info.compute_dtype, reference=info.reference, tolerance=info.tolerance)
    scale = float(max(np.abs(golden.prefill).max(initial=0.0), np.abs(golden.decode).max(initial=0.0)))
    report.logit_scale = scale
    loaded = _load(folder, manifest, device)
    views = [("decode1", artifact_view(loaded, info.entry_points))] if "decode1" in _functions(manifest) else []
    views.append(("decode", artifact_view(loaded, info.entry_points, use_decode1=False)))
    for i, (name, view) in enumerate(views):
        run: PromptRun = run_prompt(view, golden.prompt_ids, golden.steps, feed=golden.greedy)
        if i == 0:
            report.comparisons.append(compare("prefill", run.prefill, golden.prefill, _prefill_argmax(golden),
                                              scale))
        report.comparisons.append(compare(name, run.decode, golden.decode, golden.greedy[1:], scale))
    bad = [c for c in report.comparisons if c.rel_diff is None or c.rel_diff > info.tolerance]
    report.status = FAIL if bad else PASS
    report.seconds = time.perf_counter() - started
    return report


def _prefill_argmax(golden: PromptRun) -> list[int]:
    """The golden argmax at every prompt position (the last one is the first greedy token)."""
    return golden.prefill.argmax(axis=-1).tolist()


def _functions(manifest: Manifest) -> list[str]:
    info = manifest.verification
    names = info.entry_points if info is not None else {}
    return [f for f in ("prefill", "decode", "decode1") if names.get(f, f) in manifest.functions]


def verify_artifact(path: str | os.PathLike, device: str = "cpu", skip_files: bool = False,
                    progress: Progress | None = None) -> VerifyReport:
    folder = Path(path)
    manifest = read_manifest(folder)
    parse_device(device)
    files = FilesReport(SKIPPED) if skip_files else check_file_hashes(folder, manifest, progress)
    if files.status == FAIL:
        numerics = NumericsReport(SKIPPED, reason="the files do not match the manifest")
    else:
        numerics = verify_numerics(folder, manifest, device)
    return VerifyReport(str(folder), manifest.name, device, files, numerics)


# -- report ------------------------------------------------------------------------------------------------------
def _megabytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def format_report(report: VerifyReport) -> str:
    f, n = report.files, report.numerics
    lines = [f"verify {report.artifact} ({report.name}) on {report.device}"]
    if f.status == SKIPPED:
        lines.append("files     skipped (--skip-files)")
    elif f.status == PASS:
        lines.append(f"files     pass: {f.files} files, {_megabytes(f.bytes)}, every sha256 as in the manifest")
    else:
        lines.append(f"files     FAIL: {len(f.problems)} of {f.files} files do not match the manifest")
        lines += [f"          {p}" for p in f.problems]
    if n.status in (NOT_RECORDED, SKIPPED):
        lines.append(f"numerics  {n.status}: {n.reason}")
    else:
        what = "whole model" if n.layers is None else f"first {n.layers} of {n.model_layers} layers"
        lines.append(f"numerics  {'pass' if n.status == PASS else 'FAIL'}: {what}, {n.prompt_tokens}-token prompt + "
                     f"{n.greedy_steps} greedy steps, against {n.reference}")
        lines.append(f"          tolerance {n.tolerance:.0e} of the logit scale {n.logit_scale:.3g} "
                     f"({n.compute_dtype})")
        for c in n.comparisons:
            greedy = "" if c.name == "prefill" else ("  greedy tokens equal" if c.greedy_equal
                                                     else "  greedy tokens DIFFER")
            if c.max_abs_diff is None or c.rel_diff is None:
                diff, mark = "not finite (NaN or inf logits)", "  <- FAIL"
            else:
                diff = f"{c.max_abs_diff:.3g} ({c.rel_diff:.2e} of scale)"
                mark = "" if c.rel_diff <= (n.tolerance or 0) else "  <- over tolerance"
            lines.append(f"          {c.name:8s} {c.rows:3d} rows  max |diff| {diff}  "
                         f"top-1 {c.top1_agree}/{c.rows}{greedy}{mark}")
    lines.append("ok" if report.ok else "FAILED")
    return "\n".join(lines)
