"""The fixed-prompt run behind `ember verify`, shared by the compile host (golden.py records it) and the device
(runtime/verify.py reruns it), and the golden file that holds its outputs.

A run prefills the prompt (logits at every position), then makes `steps` decode steps. The compile host decodes
greedily; the device is fed the golden greedy tokens instead (teacher forcing), so that one near-tie cannot make
the two runs diverge and every decode step is compared against the same context.

Golden file (safetensors): prompt_ids int32[P], prefill_logits float32[P, vocab], decode_logits float32[N, vocab],
greedy_ids int32[N + 1] (the argmax after the prompt, then after each decode step).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ArtifactError
from .artifact import Manifest
from .loader import LoadedArtifact
from .model_runner import ModelRunner

SEQ_ID = 0
KEYS = ("prompt_ids", "prefill_logits", "decode_logits", "greedy_ids")
MODEL_FUNCTIONS = ("prefill", "decode", "decode1")


@dataclass
class PromptRun:
    prompt_ids: list[int]
    prefill: np.ndarray  # float32 [P, vocab]
    decode: np.ndarray  # float32 [N, vocab]
    greedy: list[int]  # N + 1 argmax tokens: after the prompt, then after each decode step

    @property
    def steps(self) -> int:
        return int(self.decode.shape[0])


class EntryPoints:
    """A VM seen through other names: `view["prefill"]` is `vm["verify_prefill"]` for a truncation's entry points;
    names not in the table (create_kv, fill_random_*) pass through."""

    def __init__(self, vm: Any, names: Mapping[str, str]) -> None:
        self.vm, self.names = vm, dict(names)

    def __getitem__(self, name: str) -> Any:
        return self.vm[self.names.get(name, name)]


def artifact_view(loaded: LoadedArtifact, entry_points: Mapping[str, str], use_decode1: bool = True) -> LoadedArtifact:
    """`loaded` with the model functions renamed by `entry_points` (model name -> library name); without
    `use_decode1` the runner sees no decode1 and decodes with the symbolic-batch `decode` function."""
    m = loaded.manifest
    present = [f for f in MODEL_FUNCTIONS if entry_points.get(f, f) in m.functions]
    if not use_decode1:
        present = [f for f in present if f != "decode1"]
    others = [f for f in m.functions if f not in MODEL_FUNCTIONS and f not in entry_points.values()]
    view = dataclasses.replace(m, functions=present + others)
    return LoadedArtifact(loaded.path, view, loaded.device, EntryPoints(loaded.vm, entry_points), loaded.params)


def run_prompt(loaded: LoadedArtifact, prompt: Sequence[int], steps: int,
               feed: Sequence[int] | None = None) -> PromptRun:
    """Prefill `prompt` (all logits), then `steps` decode steps of the tokens in `feed` (greedy when None)."""
    if feed is not None and len(feed) < steps:
        raise ValueError(f"feed holds {len(feed)} tokens for {steps} steps")
    runner = ModelRunner(loaded, max_batch_size=1, context_length=len(prompt) + steps + 1)
    runner.add_sequence(SEQ_ID)
    prefill = runner.prefill([SEQ_ID], [list(prompt)], all_logits=True)
    greedy = [int(np.argmax(prefill[-1]))]
    rows = []
    for step in range(steps):
        token = greedy[step] if feed is None else int(feed[step])
        logits = runner.decode([SEQ_ID], [token])[0]
        rows.append(np.array(logits, dtype=np.float32))
        greedy.append(int(np.argmax(logits)))
    runner.remove_sequence(SEQ_ID)
    decode = np.stack(rows) if rows else np.zeros((0, prefill.shape[1]), np.float32)
    return PromptRun(list(map(int, prompt)), np.asarray(prefill, np.float32), decode, greedy)


def write_golden(path: Path, run: PromptRun) -> None:
    from safetensors.numpy import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"prompt_ids": np.asarray(run.prompt_ids, np.int32), "prefill_logits": run.prefill,
               "decode_logits": run.decode, "greedy_ids": np.asarray(run.greedy, np.int32)}, str(path))


def read_golden(folder: Path, manifest: Manifest) -> PromptRun:
    """The golden outputs the manifest's `verification` names, checked against it; a damaged or mismatched file is a
    one-line ArtifactError naming it."""
    from .shards import Shard

    info = manifest.verification
    assert info is not None
    path = folder / info.golden
    if not path.is_file():
        raise ArtifactError(f"{path}: the golden outputs the manifest names are missing")
    shard = Shard(path)
    arrays = {}
    for key in KEYS:
        if key not in shard:
            raise ArtifactError(f"{path}: no tensor {key} (damaged golden outputs)")
        arrays[key] = np.array(shard.array(key))
    prompt, steps, vocab = info.prompt_ids, info.greedy_steps, manifest.vocab_size
    expected = {"prompt_ids": (len(prompt),), "prefill_logits": (len(prompt), vocab),
                "decode_logits": (steps, vocab), "greedy_ids": (steps + 1,)}
    for key, shape in expected.items():
        if arrays[key].shape != shape:
            raise ArtifactError(f"{path}: tensor {key} has shape {list(arrays[key].shape)}, the manifest implies "
                                f"{list(shape)} (damaged golden outputs)")
    if arrays["prompt_ids"].tolist() != list(prompt):
        raise ArtifactError(f"{path}: prompt_ids differ from the manifest's verification.prompt_ids")
    return PromptRun(list(prompt), arrays["prefill_logits"].astype(np.float32),
                     arrays["decode_logits"].astype(np.float32), arrays["greedy_ids"].astype(int).tolist())
