"""`ember compile`: model source -> IR -> passes -> TVM -> artifact folder.

The one place that ties frontend, passes and targets together. Everything that can be checked is checked before
any weight is read or any kernel is built: the arguments first (compile_args.py), then the config and the tensor
headers. The artifact is written into a temporary folder and moved into place (runtime.artifact.ArtifactWriter,
which applies runtime/output_rules.py), so a failed compile leaves nothing behind and replaces nothing.
Targets are targets.base.Target objects; the calling entry point must run the target's `prepare_process()`
(cuda: the stub driver) before anything imports tvm.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from contextlib import contextmanager
from typing import Callable, ContextManager, Iterator

import numpy as np

from . import golden
from .describe import IR_FILE
from .compile_args import check_request
from .errors import ConfigError, EmberError
from .frontend.models import build_module
from .frontend.presets import PRESETS
from .frontend.source import ModelSource, resolve_model
from .ir.graph import Module
from .ir.printer import format_module
from .passes.manager import PassManager, default_pipeline
from .passes.materialize import adopt_stacked_sources, check_sources, materialize
from .passes.quant_schemes import FLOAT_GGML_TYPES
from .passes.quantize import SourceFormats, default_quant, quantization_notes, unquantizable
from .passes.shard_tensor_parallel import check_divisible, check_quantized_shards, shard_layout
from .runtime import artifact as art
from .runtime.output_rules import check_destination
from .runtime.tvm_import import import_tvm_with_compiler
from .targets.attention_window import window_of
from .targets.base import BuildOptions, Target

SHARD_BYTES = 1 << 30


@dataclass
class CompileRequest:
    model: str
    target: str = "cpu"
    quant: str | None = None
    dtype: str | None = None  # compute dtype; default per target
    output: str | None = None  # artifact folder; default compiled/<name>-<quant>-<target>
    weights: str | None = None  # HF folder whose safetensors to pack (for presets)
    random_weights: bool = False
    print_after: set[str] = field(default_factory=set)
    fuse_rope: bool = True
    fuse: bool = True  # fusion passes (qkv, gate_up, swiglu, add+rms_norm); off for A/B checks
    cuda_graph: bool = True  # capture static-shape regions into CUDA graphs (GPU targets)
    force: bool = False  # replace an ember artifact at `output` (the default path needs no force: ember made it)
    tensor_parallel: int = 1  # shards (passes/shard_tensor_parallel.py); 1: one device


@dataclass
class Stage:
    """Reports progress: `say(message)` for a stage, `tick(done, total, what)` inside long loops, and
    `with wait(message):` around one long call (a spinner with the elapsed time when `spin` is given)."""

    say: Callable[[str], None] = lambda message: None
    tick: Callable[[int, int, str], None] = lambda done, total, what: None
    dump: Callable[[str], None] = print
    spin: Callable[[str], ContextManager[None]] | None = None

    @contextmanager
    def wait(self, message: str) -> Iterator[None]:
        self.say(message)
        if self.spin is None:
            yield
            return
        with self.spin(message):
            yield


def compile_model(request: CompileRequest, stage: Stage | None = None) -> Path:
    stage = stage or Stage()
    started = time.perf_counter()
    # Everything the arguments alone decide, before any model file is opened.
    target = check_request(request)
    _require_compiler()
    # The config and the tensor headers (GGUF metadata and tensor infos, safetensors headers); no tensor data.
    stage.say(f"reading {request.model}")
    source = resolve_model(request.model, request.weights, random_weights=request.random_weights)
    formats = SourceFormats.of(source.weights)  # GGUF: each tensor's type; None for other sources
    quant = request.quant or default_quant(formats) or target.default_quant
    if formats is not None:  # no --quant and a quantized GGUF: each tensor keeps its type where ember has it
        formats.keep_native = request.quant is None and default_quant(formats) is not None
    dtype = request.dtype or target.default_dtype
    shards = request.tensor_parallel
    if shards > 1:
        _check_shardable(source, formats, shards)
    output, replace, label = _output(request, target, source.name, quant)
    check_destination(output, replace=replace, label=label)

    stage.say(f"tracing {source.description or source.name} ({source.config.model_type}, "
              f"{source.config.num_hidden_layers} layers)")
    module = build_module(source.config, source.name, dtype=dtype, static_decode=target.static_decode)
    packs_weights = source.weights is not None and not request.random_weights
    if packs_weights:
        adopt_stacked_sources(module, source.weights)
    if packs_weights:  # every tensor present, of a convertible type and the config's shape, before any kernel
        check_sources(module, source.weights)
    if formats is not None:
        module.attrs["source_formats"] = formats
    manager = PassManager(default_pipeline(quant, fuse_rope=request.fuse_rope, fuse=request.fuse,
                                           tensor_parallel=shards),
                          print_after=request.print_after, printer=stage.dump)
    stage.say(f"running passes: {', '.join(manager.names)}")
    module = manager.run(module)
    if shards > 1:
        check_quantized_shards(module, quant)
    missing = unquantizable(module) if packs_weights else []
    if missing:
        raise ConfigError(f"--quant {quant}: ember keeps GGUF K-quant blocks but does not make them from other "
                          f"weights ({len(missing)}, e.g. {missing[0]}); compile the GGUF file without --quant, or "
                          "use --random-weights")
    source.notes.extend(quantization_notes(module))
    golden_plan = None  # a sharded build has no single-device reference to record golden outputs with (yet)
    if shards == 1:
        golden_plan = golden.plan(module, source.config, target, quant=quant, dtype=dtype,
                                  fuse_rope=request.fuse_rope, fuse=request.fuse, formats=formats)

    if "tvm" not in sys.modules:
        with stage.wait("loading TVM's compiler"):
            import_tvm_with_compiler()
    with stage.wait(f"lowering to TVM for {request.target}"):
        relax_mod, param_order = _lower(module, target, request.random_weights)
    reference_kernels = golden.start_reference_kernels(target) if golden_plan is not None else None

    def build_reference() -> None:  # while a target waits on its own compiler process
        if golden_plan is not None and (request.random_weights or packs_weights):  # no weights, no golden outputs
            golden.prepare_reference(golden_plan, stage, random_fill=request.random_weights,
                                     native_kernels=reference_kernels)

    with art.ArtifactWriter(output, replace=replace, label=label) as writer:
        (writer.path / IR_FILE).write_text(format_module(module))
        target_info = _build(relax_mod, target, writer.path / target.library_file,
                             BuildOptions(cuda_graph=_cuda_graph(request, target, source.notes),
                                          meanwhile=build_reference), stage)
        params = [_param_info(module, name) for name in param_order]
        weights_mode = art.WEIGHTS_NONE
        if request.random_weights:
            weights_mode = art.WEIGHTS_RANDOM
        elif packs_weights:
            stage.say(f"writing weights ({len(params)} tensors, {quant})")
            _write_weights(module, params, source, writer.path, stage, shards)
            weights_mode = art.WEIGHTS_PACKED
        tokenizer = None
        if source.tokenizer is not None:
            source.tokenizer.write(writer.path)
            tokenizer = art.TokenizerInfo(bos_token_id=source.tokenizer.bos_token_id,
                                          eos_token_ids=source.tokenizer.eos_token_ids,
                                          add_bos_token=source.tokenizer.add_bos_token,
                                          chat_template=source.tokenizer.chat_template)
        manifest = art.Manifest(
            name=source.name, architecture=source.config.architecture, config=source.config.to_dict(),
            quantization=quant, compute_dtype=dtype, target=target_info, library=target.library_file,
            kv_cache=art.KVCacheInfo(**{k: getattr(module.kv_cache, k) for k in (
                "num_layers", "num_attention_heads", "num_kv_heads", "head_dim", "dtype", "sliding_window")},
                window_layers=list(module.kv_cache.window_layers) if module.kv_cache.window_layers else None,
                window_in_kernels=window_of(relax_mod) > 0),
            vocab_size=source.config.vocab_size, context_length=source.config.max_position_embeddings,
            functions=_exported_functions(relax_mod), params=params, weights=weights_mode,
            tokenizer=tokenizer, passes=manager.names, versions=_versions(), notes=source.notes,
            source=source.path, tensor_parallel=_tensor_parallel_info(module, target, shards))
        stage.say("hashing the inputs for the build fingerprint")
        manifest.build = _build_info(request, source, target, quant, dtype, manifest.versions)
        if reference_kernels is not None:
            reference_kernels.join()
        if golden_plan is not None:
            manifest.verification = golden.record(golden_plan, writer.path, manifest, stage)  # for `ember verify`
        stage.say("hashing files and writing the manifest")
        path = writer.commit(manifest)
    stage.say(f"wrote {path} in {time.perf_counter() - started:.1f} s")
    return path


def _output(request: CompileRequest, target: Target, name: str, quant: str) -> tuple[Path, bool, str]:
    """Destination, whether an ember artifact there may be replaced, and how errors name it."""
    if request.output:
        return Path(request.output), request.force, "{output}"
    split = f"-tp{request.tensor_parallel}" if request.tensor_parallel > 1 else ""
    return Path("compiled") / f"{name}-{quant}-{target.label}{split}", True, ""  # ember's own default path: it made what is there


def _require_compiler() -> None:
    """TVM's compiler cannot join a process that loaded TVM's runtime alone (the choice is made at `import tvm`)."""
    tvm = sys.modules.get("tvm")
    runtime_only = getattr(getattr(tvm, "base", None), "_RUNTIME_ONLY", False) if tvm else (
        os.environ.get("TVM_USE_RUNTIME_LIB") == "1")  # fmt: skip
    if runtime_only:
        raise ConfigError("this process loaded TVM's runtime alone (ember.load or TVM_USE_RUNTIME_LIB=1 came first), "
                          "which cannot compile: compile in another process, or `import tvm` before ember.load")


def _lower(module: Module, target: Target, random_fill: bool):
    from .targets.lower import lower

    return lower(module, target, random_fill)


def _build(relax_mod, target: Target, library: Path, options: BuildOptions, stage: Stage) -> art.TargetInfo:
    return target.build(relax_mod, library, stage, options)


def _exported_functions(relax_mod) -> list[str]:
    from tvm import relax

    return sorted(gv.name_hint for gv, fn in relax_mod.functions.items() if isinstance(fn, relax.Function))


def _param_info(module: Module, name: str) -> art.ParamInfo:
    param = module.params[name]
    return art.ParamInfo(name=name, shape=[int(d) for d in param.type.shape], dtype=param.type.dtype,
                         scheme=param.info.get("scheme"))


def _check_shardable(source: ModelSource, formats: SourceFormats | None, shards: int) -> None:
    """Before tracing: the config splits evenly, and the weights are floats (GGUF blocks are not cut yet)."""
    check_divisible(source.config, shards)
    if formats is not None and any(t not in FLOAT_GGML_TYPES for t in formats.types.values()):
        raise ConfigError.about(f"{{tensor_parallel}} {shards}: {source.name} holds quantized GGUF tensors, which "
                                "ember does not split yet; compile a float checkpoint (any --quant)")


def _cuda_graph(request: CompileRequest, target: Target, notes: list[str]) -> bool:
    """CUDA graphs stay off in tensor-parallel builds: every shard is a thread of one process, and a capture on
    one thread while another launches or allocates fails (CUDA_ERROR_STREAM_CAPTURE_IMPLICIT, session 14)."""
    if request.tensor_parallel > 1 and request.cuda_graph and target.name == "cuda":
        notes.append("CUDA graphs off: the tensor-parallel shards run as threads of one process")
        return False
    return request.cuda_graph


def _tensor_parallel_info(module: Module, target: Target, shards: int) -> art.TensorParallelInfo | None:
    if shards == 1:
        return None
    ranks = {name: int(p.info["shard_value"]["rows"]) for name, p in module.params.items() if "shard_value" in p.info}
    return art.TensorParallelInfo(shards=shards, layout=shard_layout(module), shard_dirs=shard_dirs(shards),
                                  collectives=target.collective_functions(), rank_values=ranks)


def shard_dirs(shards: int) -> list[str]:
    return [f"{art.PARAMS_DIR}/shard-{r}-of-{shards}" for r in range(shards)]


def _write_weights(module: Module, params: list[art.ParamInfo], source: ModelSource, folder: Path,
                   stage: Stage, tensor_shards: int = 1) -> None:
    """Files of at most SHARD_BYTES, planned from the manifest's shapes, written a tensor at a time: each weight
    is materialized, appended to its file and dropped (memory holds one tensor, not one file). A tensor-parallel
    build writes the same files for each shard, in its own folder (`params` then name the file within it)."""
    from .runtime.shards import ShardWriter, tensor_nbytes

    provider = source.weights
    assert provider is not None
    (folder / art.PARAMS_DIR).mkdir()
    shards: list[list[art.ParamInfo]] = [[]]
    shard_bytes = 0
    for info in params:
        nbytes = tensor_nbytes(info.shape, info.dtype)
        if shards[-1] and shard_bytes + nbytes > SHARD_BYTES:
            shards.append([])
            shard_bytes = 0
        shards[-1].append(info)
        shard_bytes += nbytes
        info.file = f"params-{len(shards) - 1:05d}.safetensors"
        if tensor_shards == 1:
            info.file = f"{art.PARAMS_DIR}/{info.file}"
    done, total = 0, len(params) * tensor_shards
    for rank, directory in enumerate(shard_dirs(tensor_shards) if tensor_shards > 1 else [None]):
        base = folder if directory is None else folder / directory
        base.mkdir(parents=True, exist_ok=True)
        split = (rank, tensor_shards) if directory is not None else None
        for members in filter(None, shards):
            # manifest order: weights that share a source (tied embeddings) are materialized one after the other, so
            # the source's packing is made once
            planned = [(info.name, info.shape, info.dtype) for info in members]
            with ShardWriter(base / members[0].file, planned) as writer:
                for info in members:
                    stage.tick(done, total, info.name)
                    array = materialize(module.params[info.name], provider, split)
                    if list(array.shape) != list(info.shape):
                        raise EmberError(f"weight {info.name}: materialized shape {list(array.shape)}, the "
                                         f"manifest says {info.shape}")
                    writer.write(info.name, array)
                    del array
                    done += 1
    stage.tick(total, total, "done")


def _build_info(request: CompileRequest, source: ModelSource, target: Target, quant: str, dtype: str,
                versions: dict[str, str]) -> art.BuildInfo:
    from .build_fingerprint import build_info, input_files

    options = {"target": target.spec, "quant": quant, "dtype": dtype, "random_weights": request.random_weights,
               "fuse": request.fuse, "fuse_rope": request.fuse_rope, "cuda_graph": _cuda_graph(request, target, [])}
    if request.tensor_parallel > 1:  # absent otherwise, so unsharded builds keep their fingerprints
        options["tensor_parallel"] = request.tensor_parallel
    files = {} if request.random_weights else input_files(source.path, request.weights)
    preset = request.model if request.model in PRESETS and not Path(request.model).exists() else None
    return build_info(files=files, config=source.config.to_dict(), preset=preset, options=options,
                      target_kind=target.name, cross=target.name == "cpu" and ":" in target.spec, versions=versions)


def _versions() -> dict[str, str]:
    out = {}
    for dist in ("ember", "apache-tvm", "apache-tvm-ffi"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "unknown"
    return out


__all__ = ["CompileRequest", "Stage", "compile_model", "EmberError"]
