"""`ember bench --plot FILE.png`: decode tok/s against batch size, ember beside the peers of the same run, with the
roofline of each ember artifact (weight bytes per step and the copy bandwidth measured in the run: at most
copy_GBps / weight bytes steps per second, times the batch).

Rows come from a run (`BenchResult.rows` and the peers' rows) or from saved JSON-lines files (`read_rows`), which may
hold ember's rows, the rows of `ember bench --peer ...`, llama-bench's own `-o jsonl` lines or llama-batched-bench's
`--output-format jsonl` lines (as benchmarks/gpu.sh writes them: ember-*.jsonl, llamacpp*.jsonl). Matplotlib is the
optional extra `ember[plot]`; everything but `draw` works without it.
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError
from .peer_llamacpp import parse_batched_bench, parse_llama_bench_models

DECODE = re.compile(r"decode_b(\d+)_tok_s$")
EXTRA = "pip install 'ember[plot]'"


@dataclass
class Series:
    label: str
    points: list[tuple[int, float]] = field(default_factory=list)  # (batch, tok/s over all sequences), by batch
    roofline_steps_per_s: float | None = None  # ember: copy bandwidth / weight bytes per step


def read_rows(paths: Sequence[str | Path]) -> list[dict[str, Any]]:
    """Bench rows from JSON-lines files or folders of them (*.jsonl): llama.cpp's own lines become ember's rows."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(p.glob("*.jsonl"))
        elif p.is_file():
            files.append(p)
        else:
            raise InputError(f"--from {p}: no such file or folder")
    rows: list[dict[str, Any]] = []
    for f in files:
        lines = [line for line in f.read_text().splitlines() if line.lstrip().startswith("{")]
        try:
            loaded = [json.loads(line) for line in lines]
        except json.JSONDecodeError as err:
            raise InputError(f"--from {f}: not JSON lines ({err})") from None
        rows += rows_of(loaded)
    return rows


def rows_of(loaded: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """ember-format rows of one file's objects, whichever tool wrote them."""
    if any("avg_ns" in o and "n_prompt" in o for o in loaded):  # llama-bench -o jsonl
        return parse_llama_bench_models([json.dumps(o) for o in loaded])
    if any("speed_tg" in o and "pl" in o for o in loaded):  # llama-batched-bench --output-format jsonl
        return parse_batched_bench(loaded)
    return [o for o in loaded if "metric" in o and "value" in o]


def label_of(row: dict[str, Any]) -> str:
    engine = str(row.get("engine", "?"))
    quant = str(row.get("quant") or row.get("model") or "")
    source = row.get("source")
    return " ".join(part for part in (engine, quant, f"({source})" if source else "") if part)


def series_of(rows: Iterable[dict[str, Any]]) -> list[Series]:
    """One series per (engine, quant, source), in the order met; points sorted by batch, the best of a batch size
    measured more than once (bench figures are best-of); an ember series carries its roofline when its rows hold
    weight_bytes_per_step and copy_GBps."""
    found: dict[str, Series] = {}
    best: dict[str, dict[int, float]] = {}
    for row in rows:
        match = DECODE.match(str(row.get("metric", "")))
        if not match or not isinstance(row.get("value"), (int, float)):
            continue
        label = label_of(row)
        series = found.setdefault(label, Series(label))
        batch, value = int(match.group(1)), float(row["value"])
        seen = best.setdefault(label, {})
        seen[batch] = max(value, seen.get(batch, value))
        if row.get("weight_bytes_per_step") and row.get("copy_GBps"):
            series.roofline_steps_per_s = row["copy_GBps"] * 1e9 / row["weight_bytes_per_step"]
    for label, series in found.items():
        series.points = sorted(best[label].items())
    return list(found.values())


def require_matplotlib() -> Any:
    """matplotlib.pyplot on the Agg backend (no display), or the error that names the extra."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InputError(f"--plot needs matplotlib, the optional extra ember[plot]: {EXTRA}") from None
    return plt


def draw(series: Sequence[Series], path: str | Path, title: str = "decode speed") -> None:
    """A PNG of the series: lines (points for a series of one batch size), the rooflines dashed."""
    plt = require_matplotlib()
    if not series:
        raise InputError("--plot: no decode_b*_tok_s rows to draw")
    fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
    batches = sorted({b for s in series for b, _ in s.points})
    for s in series:
        xs, ys = zip(*s.points)
        (line,) = ax.plot(xs, ys, marker="o", linestyle="-" if len(xs) > 1 else "none", label=s.label)
        if s.roofline_steps_per_s:
            ax.plot(batches, [s.roofline_steps_per_s * b for b in batches], linestyle="--", color=line.get_color(),
                    label=f"roofline {s.label}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(batches, [str(b) for b in batches])
    ax.set_xlabel("batch size")
    ax.set_ylabel("decode tok/s (all sequences)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(str(path), format="png")
    plt.close(fig)


def plot_rows(rows: Iterable[dict[str, Any]], path: str | Path) -> list[Series]:
    series = series_of(rows)
    draw(series, path)
    return series
