"""Golden outputs for `ember verify`, recorded at compile time on the compile host (runtime/verify.py reruns them).

What is recorded (`runtime.artifact.VerificationInfo`, the file `verify/golden.safetensors`): the logits of a fixed
seeded prompt at every position, then of GREEDY_STEPS greedy decode steps, computed by a cpu build of the same IR
(same compute dtype, same weights: the shards just written, or for a random-weights build the same counter-based fill
the device runs, seeded by manifest index):
- models up to WHOLE_MODEL_MAX_PARAMS parameters: the whole model;
- bigger ones: a truncation to TRUNCATED_LAYERS layers (the same frontend and passes on a config with fewer layers,
  so its weights are the full model's first layers by name: no extra weight files). Its entry points are added to the
  module *before* lowering, as `verify_prefill` / `verify_decode` / `verify_decode1`, so that they are compiled into
  the main library with the very kernels the model runs (TVM shares identical kernels between functions, so they add
  no kernel and almost no build time; a library of their own would rebuild every kernel). They take the same packed
  weights as `prefill` and read only the truncation's, so the device loads just those.
The cpu build that computes them: for an artifact of this host's cpu, its own library (nothing is built twice);
for any other target, a cpu lowering of the same IR (`ReferenceCpuTarget`).
"""
from __future__ import annotations

import dataclasses
import platform
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import CompilerLoadedWarning
from .frontend.config import ModelConfig
from .frontend.models import build_module
from .frontend.models import parameter_count
from .ir.graph import Module
from .passes.manager import PassManager, default_pipeline
from .runtime import artifact as art
from .targets.base import Target
from .targets.cpu import CpuTarget

if TYPE_CHECKING:
    from .compiler import Stage
    from .runtime.loader import LoadedArtifact

WHOLE_MODEL_MAX_PARAMS = 1_000_000_000  # above this, the golden outputs are a truncation's
TRUNCATED_LAYERS = 2
PROMPT_TOKENS = 24  # more than one KV-cache page (16)
GREEDY_STEPS = 8
PROMPT_SEED = 0x656D626572  # "ember"
ENTRY_PREFIX = "verify_"
GOLDEN_FILE = "verify/golden.safetensors"
# max |logit diff| / max |golden logit| that `ember verify` accepts, per compute dtype, ~5x what two correct builds
# differ by. float32: cpu and cuda agree to ~1e-6 of the scale (docs/measurements: 5e-7 at a scale of 0.9). Half
# precision, SmolLM2 (30 layers), two cpu lowerings of one IR (TVM's generic kernels against the native ones between
# casts): float16 2.8e-3, bfloat16 2.4e-2 (3 fewer mantissa bits: 8x); cuda float16 against cpu float32 on the tiny
# parity models: ~1e-3.
TOLERANCES = {"float32": 1e-4, "float16": 2e-2, "bfloat16": 1e-1}
HALF_DTYPES = ("float16", "bfloat16")


@dataclass
class GoldenPlan:
    module: Module  # the compiled IR; holds the truncation's entry points when there is one
    target: Target
    truncation: Module | None  # None: the whole model is the golden model
    seconds: float = 0.0
    reference: ReferenceBuild | Exception | None = None  # prepare_reference's result (or why it failed)

    @property
    def entry_points(self) -> dict[str, str]:
        if self.truncation is None:
            return {}
        return {name: ENTRY_PREFIX + name for name in self.truncation.functions}


def plan(module: Module, config: ModelConfig, target: Target, *, quant: str, dtype: str, fuse_rope: bool = True,
         fuse: bool = True, formats: Any = None) -> GoldenPlan:
    """Before lowering: for a big model, trace its truncation with the same passes and add its entry points to
    `module`."""
    started = time.perf_counter()
    if parameter_count(config) <= WHOLE_MODEL_MAX_PARAMS or config.num_hidden_layers <= TRUNCATED_LAYERS:
        return GoldenPlan(module, target, None, time.perf_counter() - started)
    small = dataclasses.replace(config, num_hidden_layers=TRUNCATED_LAYERS)
    truncation = build_module(small, module.name, dtype=dtype, static_decode=target.static_decode)
    if formats is not None:
        truncation.attrs["source_formats"] = formats
    truncation.attrs["recipe_layers"] = config.num_hidden_layers  # per-layer recipes (q4_k_m) follow the model
    truncation = PassManager(default_pipeline(quant, fuse_rope=fuse_rope, fuse=fuse)).run(truncation)
    for name, param in truncation.params.items():  # the truncation's weights are the model's, by name
        full = module.params.get(name)
        if full is None or full.type != param.type or full.info.get("scheme") != param.info.get("scheme"):
            raise RuntimeError(f"golden: the {TRUNCATED_LAYERS}-layer truncation's weight {name} ({param.type}) is "
                               f"not the model's ({full.type if full else 'absent'})")
    for name, function in truncation.functions.items():
        module.functions[ENTRY_PREFIX + name] = dataclasses.replace(function, name=ENTRY_PREFIX + name)
    return GoldenPlan(module, target, truncation, time.perf_counter() - started)


@dataclass
class ReferenceBuild:
    """The cpu build of the golden model, before any weights: its library, exported functions, parameter order."""
    library: Any
    functions: list[str]
    order: list[str]


def prepare_reference(golden_plan: GoldenPlan, stage: Stage, *, random_fill: bool,
                      native_kernels: threading.Thread | None = None) -> None:
    """Builds the cpu reference of a target whose library cannot run here, ahead of `record` (a cuda build calls
    this while nvcc compiles its GEMMs: on the 2-core box the two overlap). A failure is kept for `record` to
    report."""
    if golden_plan.reference is not None:
        return
    started = time.perf_counter()
    with stage.wait("building the cpu reference for the golden outputs"), warnings.catch_warnings():
        warnings.simplefilter("ignore", CompilerLoadedWarning)
        if native_kernels is not None:
            native_kernels.join()
        try:
            golden_plan.reference = _build_reference(golden_plan, random_fill)
        except Exception as err:  # noqa: BLE001  reported by record, which ships the artifact without goldens
            golden_plan.reference = err
    golden_plan.seconds += time.perf_counter() - started


def fixed_prompt(vocab_size: int, context_length: int) -> list[int]:
    length = max(1, min(PROMPT_TOKENS, context_length - GREEDY_STEPS - 1))
    return np.random.default_rng(PROMPT_SEED).integers(0, vocab_size, size=length).tolist()


def record(golden_plan: GoldenPlan, folder: Path, manifest: art.Manifest, stage: Stage) -> art.VerificationInfo | None:
    """Inside the ArtifactWriter, once the library and the weights are written: run the fixed prompt on the
    reference cpu build and write the golden file. None (nothing recorded) for artifacts without weights."""
    if manifest.weights not in (art.WEIGHTS_PACKED, art.WEIGHTS_RANDOM):
        stage.say("golden outputs for `ember verify`: not recorded (the artifact ships no weights)")
        return None
    from .runtime.golden_run import run_prompt, write_golden

    started = time.perf_counter()
    truncation = golden_plan.truncation
    what = "whole model" if truncation is None else f"{TRUNCATED_LAYERS}-layer truncation"
    own = _runs_here(manifest)
    how = "its library" if own else f"a cpu build of the same IR, {manifest.compute_dtype}"
    with stage.wait(f"recording golden outputs for `ember verify` ({what}, {how})"), warnings.catch_warnings():
        warnings.simplefilter("ignore", CompilerLoadedWarning)  # this process compiles: of course it has TVM's compiler
        try:
            loaded = (_own_library if own else _reference_build)(golden_plan, folder, manifest)
            prompt = fixed_prompt(manifest.vocab_size, manifest.context_length)
            run = run_prompt(loaded, prompt, GREEDY_STEPS)
            if not (np.isfinite(run.prefill).all() and np.isfinite(run.decode).all()):
                raise ValueError("the reference's logits are not finite")
        except Exception as err:  # the reference failed, not the artifact: ship it, say so
            lines = [ln for ln in str(err).strip().splitlines() if ln.strip()]
            note = f"golden outputs not recorded: {type(err).__name__}: {lines[-1] if lines else ''}"
            stage.say(f"warning: {note}")
            manifest.notes.append(note)
            return None
    write_golden(folder / GOLDEN_FILE, run)
    stage.say(f"golden outputs recorded in {golden_plan.seconds + time.perf_counter() - started:.1f} s")
    machine = platform.machine()
    reference = (f"this library on the compile host ({machine})" if own
                 else f"a cpu build of the same IR on the compile host ({machine}, {manifest.compute_dtype})")
    return art.VerificationInfo(
        golden=GOLDEN_FILE, prompt_ids=prompt, greedy_steps=GREEDY_STEPS,
        tolerance=TOLERANCES.get(manifest.compute_dtype, max(TOLERANCES.values())),
        compute_dtype=manifest.compute_dtype, reference=reference,
        layers=None if truncation is None else TRUNCATED_LAYERS, entry_points=golden_plan.entry_points,
        params=[] if truncation is None else list(truncation.params), library=manifest.library)


def start_reference_kernels(target: Target) -> threading.Thread | None:
    """For a target whose library cannot run here: starts compiling (or finding in the cache) the cpu native kernels
    that the reference build will link, beside the target's own build (the C compiler is a second process: on a
    cold cache on the 2-core box this takes ~20 s off the compile). Join it before `record`."""
    if target.name == "cpu":
        return None

    def warm() -> None:
        from .targets.cpu import native
        from .targets.cpu.build import _mcpu, cpu_target

        try:
            native.native_objects(_mcpu(cpu_target()))
        except Exception:  # noqa: BLE001  the reference build compiles again and reports it
            pass

    thread = threading.Thread(target=warm, name="ember-reference-kernels", daemon=True)
    thread.start()
    return thread


def _runs_here(manifest: art.Manifest) -> bool:
    """The artifact's own library can run on this (the compile) host: a cpu build for this machine."""
    from .runtime.loader import check_target

    try:
        check_target(manifest, "cpu")
    except art.ArtifactError:
        return False
    return True


def _own_library(golden_plan: GoldenPlan, folder: Path, manifest: art.Manifest) -> LoadedArtifact:
    """The artifact's library, just written, on this host's cpu."""
    import tvm
    from tvm.runtime.vm import VirtualMachine

    from .runtime.golden_run import artifact_view
    from .runtime.loader import LoadedArtifact
    from .runtime.verify import verification_weights

    dev = tvm.cpu()
    vm = VirtualMachine(tvm.runtime.load_module(str(folder / manifest.library)), dev)
    needed = None if golden_plan.truncation is None else set(golden_plan.truncation.params)
    params = verification_weights(folder, manifest, dev, vm, needed)
    return artifact_view(LoadedArtifact(folder, manifest, dev, vm, tvm.runtime.convert(params)),
                         golden_plan.entry_points)


def _build_reference(golden_plan: GoldenPlan, random_fill: bool) -> ReferenceBuild:
    """A cpu lowering of the golden model (the whole IR, or the truncation alone), built."""
    from tvm import relax

    from .targets.cpu.build import build_cpu
    from .targets.lower import lower

    ir = golden_plan.truncation or golden_plan.module
    relax_mod, order = lower(ir, ReferenceCpuTarget("cpu"), random_fill=random_fill)
    functions = sorted(gv.name_hint for gv, f in relax_mod.functions.items() if isinstance(f, relax.Function))
    return ReferenceBuild(build_cpu(relax_mod).load(), functions, order)


def _reference_build(golden_plan: GoldenPlan, folder: Path, manifest: art.Manifest) -> LoadedArtifact:
    """The cpu reference (prepared ahead, or built now) with the artifact's weights."""
    import tvm
    from tvm.runtime.vm import VirtualMachine

    from .runtime.loader import LoadedArtifact
    from .runtime.verify import verification_weights

    reference = golden_plan.reference
    if reference is None:
        reference = _build_reference(golden_plan, random_fill=manifest.weights == art.WEIGHTS_RANDOM)
    if isinstance(reference, Exception):
        raise reference
    dev = tvm.cpu()
    vm = VirtualMachine(reference.library, dev)
    view = dataclasses.replace(manifest, functions=reference.functions)  # the full params: fills seed by index
    params = verification_weights(folder, view, dev, vm, set(reference.order), order=reference.order)
    return LoadedArtifact(folder, view, dev, vm, tvm.runtime.convert(params))


class ReferenceCpuTarget(CpuTarget):
    """The cpu lowering that computes golden outputs: cpu's own, except that with half-precision activations the
    linear layers run on the native kernels too, between casts (the generic float16 dequantize-matmul needs ~10 s of
    LLVM per kernel shape on the 2-core box; the native one computes in float32 from the same inputs and rounds the
    result to the activation dtype, as the IR's linear does)."""

    def lowerings(self) -> dict[str, Any]:
        table = dict(super().lowerings())
        for op_name in ("linear", "quant_linear", "moe", "quant_moe"):  # MoE: x cast (the kernel casts the logits)
            if op_name in table:
                table[op_name] = _between_casts(table[op_name])
        return table


def _between_casts(lowering: Any) -> Any:
    def lower_half(it: Any, node: Any, args: list) -> Any:
        x = args[0]
        if x.dtype not in HALF_DTYPES:
            return lowering(it, node, args)
        y = lowering(it, node, [x.astype("float32"), *args[1:]])
        return None if y is None else y.astype(x.dtype)

    return lower_half


__all__ = ["GoldenPlan", "ReferenceBuild", "plan", "prepare_reference", "record", "fixed_prompt", "ReferenceCpuTarget", "WHOLE_MODEL_MAX_PARAMS",
           "TOLERANCES"]
