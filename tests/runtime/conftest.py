"""Session fixtures: one tiny Llama artifact (and a sliding-window Mistral one), compiled once, plus HF oracles."""
from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from nn_fixture import TinyArtifact, build_artifact


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyArtifact:
    return build_artifact(tmp_path_factory.mktemp("artifacts") / "tiny-llama-q0f32-cpu")


@pytest.fixture(scope="session")
def tiny_sw(tmp_path_factory: pytest.TempPathFactory) -> TinyArtifact:
    return build_artifact(tmp_path_factory.mktemp("artifacts") / "tiny-mistral-q0f32-cpu", sliding_window=9,
                          name="tiny-mistral")  # fmt: skip


@pytest.fixture(scope="session")
def engine(tiny: TinyArtifact):
    from ember.runtime.engine import Engine

    return Engine.load(tiny.path, device="cpu", max_batch_size=2)


@pytest.fixture
def artifact_copy(tiny: TinyArtifact, tmp_path: Path) -> Path:
    """A private copy of the tiny artifact that a test may edit."""
    dest = tmp_path / tiny.path.name
    shutil.copytree(tiny.path, dest)
    return dest


@pytest.fixture(scope="session")
def prompt_ids() -> Callable[[int, int], list[int]]:
    def make(n: int, seed: int = 0) -> list[int]:
        rng = np.random.default_rng(seed)
        return [0] + rng.integers(3, 320, size=n - 1).tolist()  # BOS, then no special tokens

    return make
