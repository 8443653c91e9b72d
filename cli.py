"""The `ember` command line. Commands import their machinery lazily: `ember run` never loads the compiler,
and `ember compile --target cuda` prepares the CUDA build process before anything imports tvm."""
from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator

import click

from .runtime.commands import one_line_errors


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """ember: compile LLMs ahead of time with TVM, then run them with the TVM runtime alone."""


RUNTIME_COMMANDS = ("run", "chat", "bench", "verify", "eval", "serve")


def main() -> None:
    """Console entry point. `ember run`/`chat`/`bench`/`verify`/`eval` load the TVM runtime alone (no compiler library),
    exactly as on a device and as `ember.load` does from Python: both reach TVM through
    `runtime.tvm_import.import_tvm`."""
    cli()


from .passes.quant_help import QUANT_HELP  # noqa: E402  (dependency-free text)


@cli.command("compile")
@click.option("--model", "model", required=True,
              help="Preset name (see `ember models`), Hugging Face folder, .gguf file, or .onnx file.")
@click.option("--target", default="cpu", show_default=True,
              help="cpu (this machine) | cpu:aarch64 (Linux arm64) | cuda (sm_80 + sm_90 kernels) | cuda:sm_90[,sm_80...] "
                   "| metal (Apple M1 and later, macOS 13+)")
@click.option("--quant", default=None, help=QUANT_HELP)
@click.option("--dtype", default=None, type=click.Choice(["float32", "float16", "bfloat16"]),
              help="Compute dtype of activations (default float32 on cpu, float16 on GPUs).")
@click.option("--output", "-o", default=None,
              help="Artifact folder (default compiled/<name>-<quant>-<target>): a new or empty folder, or an ember "
                   "artifact with --force; anything else is refused.")
@click.option("--force", is_flag=True, help="Replace the ember artifact at --output (atomically, once the new one "
                                            "is complete). Never replaces anything else.")
@click.option("--weights", default=None, help="Folder of safetensors weights to pack (for presets).")
@click.option("--random-weights", is_flag=True,
              help="Benchmark build: the runtime makes true-shape random weights on the device at load time.")
@click.option("--cuda-graph/--no-cuda-graph", default=True, show_default=True,
              help="GPU targets: capture the static-shape parts of each step into CUDA graphs.")
@click.option("--tensor-parallel", "tensor_parallel", default=1, show_default=True, type=int,
              help="Split the model over N GPUs (tensor parallelism): one library, weights written per shard.")
@click.option("--print-after", "print_after", multiple=True,
              help="Print the IR after this pass (repeatable; 'all' for every pass).")
@click.option("--verbose", is_flag=True, help="Show full tracebacks (TVM's included).")
@one_line_errors
def compile_command(model: str, target: str, quant: str | None, dtype: str | None, output: str | None,
                    force: bool, weights: str | None, random_weights: bool, cuda_graph: bool,
                    tensor_parallel: int, print_after: tuple[str, ...], verbose: bool) -> None:
    """Compile a model into an artifact folder (library + manifest + weights + tokenizer)."""
    from .compile_args import check_request
    from .compiler import CompileRequest, compile_model  # imports no tvm
    from .progress import console_stage

    request = CompileRequest(model=model, target=target, quant=quant, dtype=dtype, output=output, weights=weights,
                             random_weights=random_weights, print_after=set(print_after), cuda_graph=cuda_graph,
                             force=force, tensor_parallel=tensor_parallel)
    check_request(request).prepare_process()  # arguments first: a typo fails before any toolchain work
    with _sigterm_cleans_up(), console_stage() as stage:
        path = compile_model(request, stage)
    click.echo(str(path))


@contextlib.contextmanager
def _sigterm_cleans_up() -> Iterator[None]:
    """While compiling, SIGTERM deletes the artifact's temporary folder and lock, says so and exits 143 (without
    this, Python's default action ends the process where it stands and leaves them; SIGKILL still does, and the
    next compile removes them). The handler runs between Python bytecodes, so inside one long native call (TVM's
    build) it waits for that call to return, or for the next Python callback (the nvcc hook)."""
    from .runtime.artifact import abandon_active_writers

    def handler(signum: int, _frame: object) -> None:
        abandon_active_writers()
        click.echo("error: terminated (SIGTERM); the compile's temporary folder was removed, nothing was written",
                   err=True)
        os._exit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@cli.command("bundle")
@click.argument("artifact", type=click.Path(file_okay=False))
@click.option("--output", "-o", required=True, help="Folder to write (must not exist, or be empty).")
@click.option("--server", is_flag=True, help="Also bundle what `ember serve` needs (starlette, uvicorn, ...).")
@click.option("--verbose", is_flag=True, help="Show full tracebacks.")
@one_line_errors
def bundle_command(artifact: str, output: str, server: bool, verbose: bool) -> None:
    """Write what a device needs to run ARTIFACT: the artifact, ember's runtime, TVM's runtime without its compiler
    library, and the runtime's dependencies, with a launcher (DIR/bin/ember run DIR/artifact ...)."""
    from .bundle import make_bundle

    click.echo(make_bundle(artifact, output, server=server).summary())


@cli.command("models")
def models_command() -> None:
    """List the built-in model presets."""
    from .frontend.models import parameter_count
    from .frontend.presets import PRESETS, preset_config

    for name in PRESETS:
        cfg = preset_config(name)
        extra = []
        if cfg.rope_scaling:
            extra.append(f"rope {cfg.rope_scaling['rope_type']}")
        if cfg.sliding_window:
            layers = cfg.window_layers
            extra.append(f"window {cfg.sliding_window}" + (f" on {len(layers)} layers" if layers is not None else ""))
        if cfg.tie_word_embeddings:
            extra.append("tied embeddings")
        click.echo(f"{name:14s} {cfg.model_type:8s} {parameter_count(cfg) / 1e9:6.2f}B  "
                   f"layers {cfg.num_hidden_layers:2d}  hidden {cfg.hidden_size:5d}  heads "
                   f"{cfg.num_attention_heads}/{cfg.num_key_value_heads}  vocab {cfg.vocab_size}"
                   + (f"  ({', '.join(extra)})" if extra else ""))


@cli.command("inspect")
@click.argument("path")
@click.option("--ir", "show_ir", is_flag=True, help="Print the IR the artifact was compiled from.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of text.")
@click.option("--verbose", is_flag=True, help="Show full tracebacks (TVM's included).")
@one_line_errors
def inspect_command(path: str, show_ir: bool, as_json: bool, verbose: bool) -> None:
    """Describe an artifact folder, a GGUF file, or a Hugging Face folder (text, or --json)."""
    from .describe import describe

    click.echo(describe(path, show_ir=show_ir, as_json=as_json))


def _register_runtime_commands() -> None:
    from .runtime import commands

    for name in RUNTIME_COMMANDS:
        cli.add_command(commands.COMMANDS[name], name)


_register_runtime_commands()


if __name__ == "__main__":
    main()
