"""Progress on stderr for long work (compile, convert): one line per stage, a bar inside long loops, a spinner with
the elapsed time during one long call (tvm.compile, linking). Bars and spinners only on a terminal."""
from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from .compiler import Stage


@contextmanager
def console_stage() -> Iterator[Stage]:
    console = Console(stderr=True, highlight=False)
    started = time.perf_counter()
    bar: dict[str, object] = {}

    def say(message: str) -> None:
        console.print(f"[dim]{time.perf_counter() - started:6.1f}s[/dim] {message}")

    def tick(done: int, total: int, what: str) -> None:
        if not console.is_terminal:  # a log: the stage lines say enough
            return
        if "progress" not in bar:
            progress = Progress(TextColumn("       writing weights"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.description}"), TimeElapsedColumn(), console=console,
                                transient=True)
            progress.start()
            bar["progress"], bar["task"] = progress, progress.add_task(what, total=total)
        progress = bar["progress"]
        progress.update(bar["task"], completed=done, description=what[-48:])  # type: ignore[attr-defined]
        if done >= total:
            progress.stop()  # type: ignore[attr-defined]
            bar.clear()

    def dump(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    @contextmanager
    def spin(message: str) -> Iterator[None]:
        """A spinner with the elapsed time while one long call runs (terminals only; logs get the stage line)."""
        if not console.is_terminal:
            yield
            return
        with Progress(TextColumn("      "), SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                      console=console, transient=True) as progress:  # fmt: skip
            progress.add_task(message[:60], total=None)
            yield

    try:
        yield Stage(say=say, tick=tick, dump=dump, spin=spin)
    finally:
        if "progress" in bar:
            bar["progress"].stop()  # type: ignore[attr-defined]
