"""Click commands `run`, `chat`, `bench`, `verify`, `eval` and `serve` (cli.py registers them on the `ember`
group by their names in COMMANDS)."""
from __future__ import annotations

import contextlib
import functools
import json
import sys
from collections.abc import Callable, Iterator
from typing import Any

import click

from ..errors import EmberError, InputError

_DEVICE_HELP = "cpu, cuda or cuda:N"
PEERS = ("hf", "hf:compile", "llama.cpp")  # `ember bench --peer`


def one_line_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Errors -> one `error: ...` line on stderr (naming command-line options, not Python arguments) and exit 1;
    the traceback only with --verbose. Every `ember` command uses it (the command takes a `verbose` flag)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except EmberError as err:
            if kwargs.get("verbose"):
                raise
            click.echo(f"error: {err.cli_message}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except Exception as err:  # TVM's own errors: the last line says what went wrong
            if kwargs.get("verbose"):
                raise
            lines = str(err).strip().splitlines()
            click.echo(f"error: {type(err).__name__}: {lines[-1] if lines else ''} (--verbose for details)", err=True)
            sys.exit(1)

    return wrapper


def _check_before_load(artifact: str, device: str, ids: list[int] | None, max_tokens: int, **sampling: Any) -> None:
    """The options, against each other and the artifact's manifest, before the (seconds-long) model load. Errors
    name the options (--max-tokens), as one_line_errors prints them."""
    from ..errors import InputError
    from .artifact import read_manifest
    from .engine import check_load_arguments, planned_context
    from .generate import check_max_tokens
    from .sampler import SamplingParams

    check_max_tokens(max_tokens)
    SamplingParams(**sampling)
    manifest = read_manifest(artifact)
    check_load_arguments(manifest, device, 1, None, None)
    if ids is not None:
        if not ids:
            raise InputError.about("{prompt_ids} holds no token ids")
        bad = [(i, t) for i, t in enumerate(ids) if not 0 <= t < manifest.vocab_size]
        if bad:
            raise InputError.about(f"{{prompt_ids}}: token id {bad[0][1]} at position {bad[0][0]} is outside the "
                                   f"vocabulary [0, {manifest.vocab_size}) of {manifest.name}")
    prompt_tokens = len(ids) if ids is not None else 1  # a text prompt is at least one token
    context = planned_context(manifest)
    if prompt_tokens + max_tokens > context:
        raise InputError.about(f"a prompt of {prompt_tokens} token(s) + {{max_tokens}} {max_tokens} exceeds the "
                               f"context length {context} of {manifest.name}")


_DEVICES_HELP = ("A tensor-parallel artifact's devices, one per shard: cuda:0-3 or cuda:0,1 (cuda builds, NCCL "
                 "between the GPUs), or cpu (cpu builds); every shard is a thread of this process.")


def _sharded_device(artifact: str, devices: str) -> str:
    """A tensor-parallel artifact's --devices checked against its shards and collectives before anything loads;
    the device kind its shards run on."""
    from .artifact import read_manifest
    from .tensor_parallel import check_collectives, check_devices, parse_devices

    manifest = read_manifest(artifact)
    kind, ids = parse_devices(devices)
    check_devices(manifest, kind, ids)
    check_collectives(manifest, kind)
    return manifest.target.kind


def _load(artifact: str, device: str, verbose: bool, check: bool = False, devices: str | None = None) -> Any:
    from .engine import Engine

    if devices is not None:
        engine = Engine.load_sharded(artifact, devices)
    elif check:
        with _hash_progress(enabled=True) as progress:
            engine = Engine.load(artifact, device=device, verify=True, verify_progress=progress)
    else:
        engine = Engine.load(artifact, device=device)
    if verbose:
        click.echo(f"loaded {engine.describe()}", err=True)
    return engine


def _parse_ids(text: str) -> list[int]:
    from ..errors import InputError

    try:
        return [int(t) for t in text.replace(",", " ").split()]
    except ValueError:
        raise InputError.about(f"{{prompt_ids}} must be integers separated by commas or spaces, got {text!r}") from None


def _stream_to_stdout(piece: str) -> None:
    click.echo(piece, nl=False)
    sys.stdout.flush()


def sampling_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """--temperature, --top-k, --top-p, --seed, --device and --check, shared by `run` and `chat`."""
    command = click.option("--check", is_flag=True, help="Verify every file's sha256 first (every load checks "
                           "file sizes and the manifest's own hash).")(command)  # fmt: skip
    command = click.option("--device", default="cpu", show_default=True, help=_DEVICE_HELP)(command)
    command = click.option("--seed", default=None, type=int, help="Seed for sampling.")(command)
    command = click.option("--top-p", default=1.0, show_default=True, type=float, help="1 = off.")(command)
    command = click.option("--top-k", default=0, show_default=True, type=int, help="0 = off.")(command)
    command = click.option("--temperature", default=0.0, show_default=True, type=float, help="0 = greedy.")(command)
    return command


def penalty_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """--min-p and the penalties (`run`)."""
    command = click.option("--frequency-penalty", default=0.0, show_default=True, type=float,
                           help="OpenAI's: logit -= penalty * count in the output.")(command)
    command = click.option("--presence-penalty", default=0.0, show_default=True, type=float,
                           help="OpenAI's: logit -= penalty if in the output.")(command)
    command = click.option("--repetition-penalty", default=1.0, show_default=True, type=float,
                           help="transformers': over prompt and output tokens; 1 = off.")(command)
    command = click.option("--min-p", default=0.0, show_default=True, type=float, help="0 = off.")(command)
    return command


@click.command("run")
@click.argument("artifact", type=click.Path(file_okay=False))
@click.option("--prompt", "-p", default=None, help="Prompt text (tokenized with the artifact's tokenizer).")
@click.option("--prompt-ids", default=None, help="Prompt as token ids ('1,2,3'), instead of --prompt.")
@click.option("--max-tokens", "-n", default=128, show_default=True, type=int, help="Most tokens to generate.")
@sampling_options
@penalty_options
@click.option("--devices", default=None, help=_DEVICES_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (token ids, text, timings).")
@click.option("--verbose", is_flag=True, help="Tracebacks on errors; load details.")
@one_line_errors
def run(
    artifact: str,
    prompt: str | None,
    prompt_ids: str | None,
    max_tokens: int,
    temperature: float,
    top_k: int,
    top_p: float,
    seed: int | None,
    min_p: float,
    repetition_penalty: float,
    presence_penalty: float,
    frequency_penalty: float,
    device: str,
    check: bool,
    devices: str | None,
    as_json: bool,
    verbose: bool,
) -> None:
    """Generate text from ARTIFACT (a compiled artifact folder)."""
    from ..errors import InputError

    if (prompt is None) == (prompt_ids is None):
        raise InputError("give exactly one of --prompt and --prompt-ids")
    ids = _parse_ids(prompt_ids) if prompt_ids is not None else None
    sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, min_p=min_p,
                    repetition_penalty=repetition_penalty, presence_penalty=presence_penalty,
                    frequency_penalty=frequency_penalty)
    if devices is not None:
        device = _sharded_device(artifact, devices)
    _check_before_load(artifact, device, ids, max_tokens, **sampling)
    engine = _load(artifact, device, verbose, check, devices)
    stream = None if as_json or engine.tokenizer is None else _stream_to_stdout
    result = engine.generate(prompt if prompt is not None else ids, max_tokens=max_tokens, stream=stream, **sampling)
    if as_json:
        click.echo(json.dumps({"artifact": engine.manifest.name, "device": device, **result.to_dict()}))
        return
    if stream is None:
        click.echo(" ".join(map(str, result.token_ids)), nl=False)
    click.echo("")
    click.echo(result.summary(), err=True)


@click.command("chat")
@click.argument("artifact", type=click.Path(file_okay=False))
@click.option("--message", "-m", default=None, help="One user message; answer it and exit.")
@click.option("--system", default=None, help="System prompt.")
@click.option("--max-tokens", "-n", default=512, show_default=True, type=int, help="Most tokens per reply.")
@sampling_options
@click.option("--verbose", is_flag=True, help="Tracebacks on errors; timings after each reply.")
@one_line_errors
def chat(
    artifact: str,
    message: str | None,
    system: str | None,
    max_tokens: int,
    temperature: float,
    top_k: int,
    top_p: float,
    seed: int | None,
    device: str,
    check: bool,
    verbose: bool,
) -> None:
    """Chat with ARTIFACT: one-shot with -m, otherwise an interactive loop (/reset clears, /exit or Ctrl-D ends)."""
    _check_before_load(artifact, device, None, max_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    engine = _load(artifact, device, verbose, check)
    history: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    options = dict(max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)

    def reply(text: str) -> None:
        history.append({"role": "user", "content": text})
        result = engine.chat(history, stream=_stream_to_stdout, **options)
        click.echo("")
        history.append({"role": "assistant", "content": result.text})
        if verbose or engine.random_weights:
            click.echo(result.summary(), err=True)

    if message is not None:
        reply(message)
        return
    if engine.random_weights:
        click.echo(f"note: {engine.manifest.name} has random weights (benchmark build); replies are noise", err=True)
    while True:
        try:
            text = input("> ")
        except (EOFError, KeyboardInterrupt):
            click.echo("")
            return
        if text.strip() in ("/exit", "/quit"):
            return
        if text.strip() == "/reset":
            del history[1 if system else 0 :]
            continue
        if text.strip():
            try:
                reply(text)
            except EmberError as err:  # e.g. the conversation outgrew the context: say so and keep going
                history.pop()
                click.echo(f"error: {err.cli_message}", err=True)


@click.command("bench")
@click.argument("artifact", type=click.Path(file_okay=False), required=False)
@click.option("--device", default="cpu", show_default=True, help=_DEVICE_HELP)
@click.option("--prefill", "prefill", default="512", show_default=True, help="Prompt lengths to time (comma list).")
@click.option("--batch", "batches", default="1", show_default=True, help="Decode batch sizes (comma list).")
@click.option("--context", "contexts", default="", help="Also decode at batch 1 after prompts of these lengths "
              "(comma list, e.g. 128,2048,8000): rows decode_ctx{N}_b1_tok_s.")
@click.option("--steps", default=256, show_default=True, type=int, help="Decode steps per measurement.")
@click.option("--repeats", default=3, show_default=True, type=int)
@click.option("--peer", default=None, type=click.Choice(PEERS),
              help="Measure a peer in the same run: hf (transformers eager), hf:compile, or llama.cpp (llama-bench).")
@click.option("--llama-bench", "llama_bench", default=None, type=click.Path(dir_okay=False),
              help="The llama-bench binary for --peer llama.cpp (default: llama-bench on PATH).")
@click.option("--gguf", default=None, type=click.Path(dir_okay=False),
              help="The GGUF file llama-bench runs (default: the one the artifact was compiled from).")
@click.option("--output", "output", default=None, type=click.Path(dir_okay=False),
              help="Also write the JSON rows to this file.")
@click.option("--profile", is_flag=True,
              help="Also print the top kernels by GPU time of a prefill, per --prefill length, and of a decode "
                   "step, per batch size (cuda; needs torch).")
@click.option("--plot", default=None, type=click.Path(dir_okay=False),
              help="Draw decode tok/s against batch size (ember, the peers, the roofline) into this PNG "
                   "(needs the extra ember[plot]).")
@click.option("--from", "sources", multiple=True, type=click.Path(exists=True),
              help="With --plot and no ARTIFACT: draw saved rows (JSON-lines files or folders of *.jsonl, as "
                   "benchmarks/gpu.sh writes them; llama-bench's and llama-batched-bench's own lines too). Repeatable.")
@click.option("--devices", default=None, help=_DEVICES_HELP)
@click.option("--verbose", is_flag=True, help="Show full tracebacks.")
@one_line_errors
def bench(artifact: str | None, device: str, prefill: str, batches: str, contexts: str, steps: int, repeats: int,
          peer: str | None, llama_bench: str | None, gguf: str | None, output: str | None, profile: bool,
          plot: str | None, sources: tuple[str, ...], devices: str | None, verbose: bool) -> None:
    """Time prefill, TTFT and decode of ARTIFACT (JSON lines on stdout), beside a peer when asked; or, with
    --plot and --from, draw rows saved by earlier runs."""
    if sources:
        if artifact is not None or not plot:
            raise InputError("--from draws saved rows: give --plot FILE.png and no ARTIFACT")
        from .bench_plot import plot_rows, read_rows

        _echo_series(plot_rows(read_rows(sources), plot), plot)
        return
    if artifact is None:
        raise InputError("give an ARTIFACT to time (or --plot FILE.png --from ROWS.jsonl to draw saved rows)")
    if plot:
        from .bench_plot import require_matplotlib

        require_matplotlib()  # before timing anything
    from .bench import needed_context, ratio_rows, run_bench, run_peer

    lengths = _int_list(prefill, "--prefill")
    sizes = _int_list(batches, "--batch") or [1]
    ctx_lengths = _int_list(contexts, "--context")
    if devices is not None and (profile or peer):
        raise InputError(f"--devices times a tensor-parallel artifact on its own: drop --{'profile' if profile else 'peer'}")
    if devices is not None:
        device = _sharded_device(artifact, devices)
    if profile and not device.startswith("cuda"):
        raise InputError("--profile reads CUDA kernel times: use it with --device cuda")
    if peer == "llama.cpp":  # before timing anything: the peer's inputs must exist
        from .peer_llamacpp import find_llama_bench

        llama_bench = find_llama_bench(llama_bench)
        gguf = gguf or _compiled_from_gguf(artifact)
    from .artifact import read_manifest
    from .engine import Engine

    # the cache holds the longest prompt (or a prompt plus every decode step) for each sequence
    context = needed_context(lengths, steps, ctx_lengths)
    manifest = read_manifest(artifact)
    if context > manifest.context_length:
        raise InputError(f"--context/--prefill/--steps need {context} tokens per sequence, more "
                               f"than the context length {manifest.context_length} of {manifest.name}")
    if devices is not None:
        engine = Engine.load_sharded(artifact, devices, max_batch_size=max(sizes), context_length=context)
    else:
        engine = Engine.load(artifact, device=device, max_batch_size=max(sizes), context_length=context)
    result = run_bench(engine, devices or device, lengths, sizes, steps, repeats, contexts=ctx_lengths)
    rows = result.rows()
    threads = engine.threads
    if threads:
        rows = [{**row, "threads": threads} for row in rows]
    if peer == "llama.cpp":
        from .peer_llamacpp import run_llama_bench
        from .threads import physical_cores

        assert llama_bench is not None and gguf is not None
        theirs = run_llama_bench(llama_bench, gguf, threads or physical_cores(), lengths, steps, repeats)
    elif peer:
        theirs = run_peer(peer, engine.manifest.config, device, lengths, steps)
    if peer:
        rows += theirs + [{"ratio": r} for r in ratio_rows(result.rows(), theirs)]
    if profile:
        from .profile import profile_decode, profile_prefill

        for length in lengths:
            rows += profile_prefill(engine, length)
        for size in sizes:
            rows += profile_decode(engine, size, steps=min(steps, 32))
    for row in rows:
        click.echo(json.dumps(row))
    if output:
        with open(output, "w") as handle:
            handle.write("".join(json.dumps(r) + "\n" for r in rows))
    if plot:
        from .bench_plot import plot_rows

        _echo_series(plot_rows(rows, plot), plot)
    if result.weights == "random":
        click.echo("note: random weights (benchmark build)", err=True)


def _int_list(text: str, option: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"{option} takes whole numbers separated by commas, got {text!r}") from None
    if any(v < 1 for v in values):
        raise InputError(f"{option} values must be >= 1, got {text!r}")
    return values


def _echo_series(series: list[Any], path: str) -> None:
    names = ", ".join(f"{s.label} ({len(s.points)})" for s in series)
    click.echo(f"plot: {path}: {names}", err=True)


@click.command("verify")
@click.argument("artifact", type=click.Path(file_okay=False))
@click.option("--device", default="cpu", show_default=True, help=_DEVICE_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the report.")
@click.option("--skip-files", is_flag=True, help="Skip the sha256 check of every file (numerics only).")
@click.option("--verbose", is_flag=True, help="Show full tracebacks.")
@one_line_errors
def verify(artifact: str, device: str, as_json: bool, skip_files: bool, verbose: bool) -> None:
    """Check ARTIFACT: every file against the manifest's sha256, then its numerics on --device against the golden
    outputs recorded at compile time. Exits 1 if either check fails."""
    from .verify import format_report, verify_artifact

    with _hash_progress(enabled=not as_json) as progress:
        report = verify_artifact(artifact, device=device, skip_files=skip_files, progress=progress)
    click.echo(json.dumps(report.to_dict()) if as_json else format_report(report))
    if not report.ok:
        sys.exit(1)


@click.command("eval")
@click.argument("artifact", type=click.Path(file_okay=False))
@click.option("--perplexity", "text_file", default=None, metavar="FILE.txt",
              help="Perplexity of this UTF-8 text, tokenized with the artifact's tokenizer.")
@click.option("--context", default=None, type=int,
              help="Tokens per window (default: the artifact's context length, at most 512).")
@click.option("--stride", default=None, type=int,
              help="strided: tokens each window advances (default context/2); the tokens no earlier window scored "
                   "are scored, each with at least context - stride tokens before it.")
@click.option("--scoring", default="strided", show_default=True, type=click.Choice(["strided", "llama.cpp"]),
              help="llama.cpp: llama-perplexity's rule (whole chunks of --context tokens, each scoring its second "
                   "half but the first of it).")
@click.option("--max-tokens", default=None, type=int, help="Evaluate only the first N tokens of the text.")
@click.option("--device", default="cpu", show_default=True, help=_DEVICE_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--verbose", is_flag=True, help="Tracebacks on errors; load details.")
@one_line_errors
def eval_command(artifact: str, text_file: str | None, context: int | None, stride: int | None, scoring: str,
                 max_tokens: int | None, device: str, as_json: bool, verbose: bool) -> None:
    """Evaluate ARTIFACT's model on a text: --perplexity FILE.txt (sliding windows over the artifact's prefill)."""
    from .artifact import read_manifest
    from .engine import check_load_arguments
    from .perplexity import artifact_tokenizer, check_options, check_token_count, perplexity, read_text

    if text_file is None:
        raise InputError("give --perplexity FILE.txt (the text to evaluate)")
    manifest = read_manifest(artifact)
    context, stride = check_options(manifest, context, stride, scoring, max_tokens)
    check_load_arguments(manifest, device, 1, context, None)
    tokenizer = artifact_tokenizer(artifact, manifest)
    text = read_text(text_file)
    ids = tokenizer.encode(text)
    check_token_count(len(ids[:max_tokens] if max_tokens else ids), context, scoring, text_file)
    engine = _load_for(artifact, device, verbose, context_length=context)
    with _window_progress(enabled=not as_json) as progress:
        result = perplexity(engine, ids, context=context, stride=stride, scoring=scoring, max_tokens=max_tokens,
                            progress=progress)
    if as_json:
        click.echo(json.dumps({"artifact": engine.manifest.name, "quantization": engine.manifest.quantization,
                               "device": device, "file": text_file, **result.to_dict()}))
    else:
        click.echo(result.summary())
    if engine.random_weights:
        click.echo("note: random weights (benchmark build)", err=True)


def _load_for(artifact: str, device: str, verbose: bool, **options: Any) -> Any:
    from .engine import Engine

    engine = Engine.load(artifact, device=device, **options)
    if verbose:
        click.echo(f"loaded {engine.describe()}", err=True)
    return engine


@contextlib.contextmanager
def _window_progress(enabled: bool) -> Iterator[Callable[[int, int, float], None] | None]:
    """A bar on stderr on a terminal; elsewhere a line about every tenth of the windows (long files only)."""
    from rich.console import Console

    console = Console(stderr=True, highlight=False)
    if not enabled:
        yield None
        return
    if not console.is_terminal:
        def line(done: int, total: int, ppl: float) -> None:
            if total >= 20 and (done * 10 // total != (done - 1) * 10 // total):
                click.echo(f"[{done}/{total}] perplexity so far {ppl:.4f}", err=True)

        yield line
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("windows"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
                  TimeRemainingColumn(), console=console, transient=True) as bar:
        task = bar.add_task("", total=None)

        def tick(done: int, total: int, ppl: float) -> None:
            bar.update(task, completed=done, total=total, description=f"ppl {ppl:.4f}")

        yield tick


MIN_BAR_BYTES = 256 << 20  # hashing less than this takes about a second: no bar


@contextlib.contextmanager
def _hash_progress(enabled: bool) -> Iterator[Callable[[int, int, str], None] | None]:
    """A bar on stderr while files are hashed (terminals only, folders of MIN_BAR_BYTES or more)."""
    from rich.console import Console

    console = Console(stderr=True, highlight=False)
    if not enabled or not console.is_terminal:
        yield None
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("hashing"), BarColumn(), DownloadColumn(), TextColumn("{task.description}"),
                  TimeRemainingColumn(), console=console, transient=True) as bar:
        task = None

        def tick(done: int, total: int, what: str) -> None:
            nonlocal task
            if total < MIN_BAR_BYTES:
                return
            if task is None:
                task = bar.add_task(what, total=total)
            bar.update(task, completed=done, description=what[-40:])

        yield tick


def _compiled_from_gguf(artifact: str) -> str:
    from ..errors import InputError
    from .artifact import read_manifest

    source = read_manifest(artifact).source
    if source and source.lower().endswith(".gguf"):
        return source
    raise InputError(
        f"--peer llama.cpp needs --gguf PATH: the manifest of {artifact} names no GGUF it was compiled from"
    )


SERVE_EXTRA = "ember serve needs the [serve] extra: pip install 'ember[serve]' (starlette, uvicorn, prometheus-client)"


@click.command("serve")
@click.argument("artifact", type=click.Path(file_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (0.0.0.0 exposes the server).")
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--api-key", default=None, envvar="EMBER_API_KEY",
              help="Require 'Authorization: Bearer KEY' (or set EMBER_API_KEY).")
@click.option("--max-batch", "--max-num-seqs", "max_batch", default=16, show_default=True, type=int,
              help="Most sequences decoded together.")
@click.option("--max-queue", default=256, show_default=True, type=int,
              help="Most requests waiting; more get 429 with Retry-After.")
@click.option("--context-length", "--max-model-len", "context_length", default=None, type=int,
              help="Tokens per sequence (default: the artifact's, at most 8192).")
@click.option("--kv-tokens", default=None, type=int,
              help="Tokens the KV cache holds over all sequences (default: --max-batch full contexts).")
@click.option("--gpu-memory-utilization", default=None, type=float,
              help="Size the KV cache to this fraction of the device memory free after the weights load, up to "
              "full contexts for every sequence slot (default 0.9 on a gpu; on cpu --kv-tokens' default, and "
              "given, a fraction of the host's available memory).")
@click.option("--prefix-cache/--no-prefix-cache", default=True, show_default=True,
              help="Keep finished sequences' KV pages for requests that share their prompt prefix.")
@click.option("--model-name", default=None, help="The model id clients send (default: the artifact's name).")
@click.option("--host-sampling", is_flag=True,
              help="Sample on the host even where the artifact samples on the device (cuda builds): every step's "
              "logits come to the host.")
@click.option("--device", default="cpu", show_default=True, help=_DEVICE_HELP)
@click.option("--devices", default=None, help=_DEVICES_HELP)
@click.option("--verbose", is_flag=True, help="Tracebacks on errors; request logs.")
@one_line_errors
def serve(artifact: str, host: str, port: int, api_key: str | None, max_batch: int, max_queue: int,
          context_length: int | None, kv_tokens: int | None, gpu_memory_utilization: float | None,
          prefix_cache: bool, model_name: str | None, host_sampling: bool, device: str, devices: str | None,
          verbose: bool) -> None:
    """Serve ARTIFACT over an OpenAI-compatible HTTP API (/v1/completions, /v1/chat/completions, /v1/models,
    /health, /metrics) with continuous batching. SIGTERM or Ctrl-C stops it gracefully."""
    try:
        import prometheus_client  # noqa: F401
        import starlette  # noqa: F401
        import uvicorn
    except ImportError:
        raise click.ClickException(SERVE_EXTRA) from None
    from .serving.async_engine import AsyncEngine
    from .serving.server import create_app

    if max_queue < 0:
        raise InputError.about(f"{{max_queue}} must be >= 0, got {max_queue}")
    if devices is not None:
        device = _sharded_device(artifact, devices)
    if gpu_memory_utilization is None and kv_tokens is None and not device.startswith("cpu"):
        gpu_memory_utilization = 0.9  # of what the weights leave free, up to every slot's full context
    engine = AsyncEngine.load(artifact, device=device, max_seqs=max_batch, max_queue=max_queue,
                              context_length=context_length, kv_tokens=kv_tokens, prefix_cache=prefix_cache,
                              memory_utilization=gpu_memory_utilization,
                              device_sampling=False if host_sampling else None, devices=devices)
    app = create_app(engine, api_key=api_key, model_name=model_name, on_shutdown=engine.shutdown)
    click.echo(f"serving {engine.engine.describe()} at http://{host}:{port}/v1 "
               f"(batch {max_batch}, {engine.stats()['kv_pages_total']} KV pages, sampling on the "
               f"{'device' if engine.samples_on_device else 'host'})", err=True)
    config = uvicorn.Config(app, host=host, port=port, log_level="info" if verbose else "warning",
                            timeout_graceful_shutdown=10)
    import signal

    # uvicorn stops gracefully on SIGTERM, then re-raises it for the handler it found: let that one return, so
    # a terminated server exits 0
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    uvicorn.Server(config).run()


COMMANDS = {"run": run, "chat": chat, "bench": bench, "verify": verify, "eval": eval_command, "serve": serve}
