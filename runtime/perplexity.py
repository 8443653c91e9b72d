"""`ember eval --perplexity`: the perplexity of a text under an artifact, computed with its own prefill entry point.

The text is tokenized with the artifact's tokenizer, then windows of `context` tokens run through the model, each
from an empty KV cache, and each scores some of its tokens: -log p(token | the tokens before it in the window),
from float32 logits turned into a log-softmax in float64 on the host. Only the positions whose next token is scored
are asked of the prefill (`logit_pos`), so the LM head runs for those alone. Two rules choose the windows:

- `strided` (the default; the strided evaluation of Hugging Face's perplexity guide): the window advances by
  `stride` tokens and scores the tokens no earlier window scored, so every token but the first is scored once,
  the first window's with the context they have, every later one with at least `context - stride` tokens before
  it (with stride = context the windows do not overlap and each one's first token goes unscored).
- `llama.cpp` (`llama-perplexity -c N` without `--ppl-stride`): the text is cut into whole chunks of `context`
  tokens (a shorter tail is dropped); each chunk starts from scratch and scores its tokens at positions
  context/2 + 1 ... context - 1, i.e. context - context/2 - 1 tokens each, with at least context/2 tokens before
  them. When the tokenizer adds BOS, the chunk's first token is replaced by BOS, as llama.cpp does.

Perplexity is exp(mean NLL) over every scored token. Runtime only (TVM's runtime), like `ember run`.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import ArtifactError, InputError
from .artifact import Manifest

if TYPE_CHECKING:
    from .engine import Engine
    from .tokenizer import Tokenizer

STRIDED, LLAMA_CPP = "strided", "llama.cpp"
RULES = (STRIDED, LLAMA_CPP)
DEFAULT_CONTEXT = 512
SEQ = 0
SOFTMAX_ROWS = 64  # rows converted to float64 at a time (64 x 152k vocab = 78 MB)

Progress = Callable[[int, int, float], None]  # (windows done, windows in all, perplexity so far)


@dataclass(frozen=True)
class Window:
    start: int  # the window's tokens are ids[start:stop]
    stop: int
    first_scored: int  # ids[first_scored:stop] are scored, each from the logits one position earlier

    @property
    def scored(self) -> int:
        return self.stop - self.first_scored


@dataclass
class PerplexityResult:
    perplexity: float
    mean_nll: float
    tokens_scored: int
    windows: int
    tokens_evaluated: int  # tokens run through the model (windows overlap under `strided`)
    tokens_in_text: int  # after tokenization, before --max-tokens
    context: int
    stride: int | None
    scoring: str
    seconds: float

    @property
    def tokens_per_s(self) -> float:
        return self.tokens_evaluated / self.seconds if self.seconds > 0 else float("nan")

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "tokens_per_s": self.tokens_per_s}

    def summary(self) -> str:
        stride = f", stride {self.stride}" if self.stride is not None else ""
        return (f"perplexity {self.perplexity:.4f} (mean NLL {self.mean_nll:.6f}) over {self.tokens_scored} scored "
                f"tokens in {self.windows} windows of {self.context}{stride} ({self.scoring}); "
                f"{self.tokens_evaluated} tokens evaluated in {self.seconds:.1f} s, {self.tokens_per_s:.0f} tok/s")


def default_context(manifest: Manifest) -> int:
    return min(manifest.context_length, DEFAULT_CONTEXT)


def check_options(manifest: Manifest, context: int | None, stride: int | None, scoring: str,
                  max_tokens: int | None) -> tuple[int, int | None]:
    """(context, stride) with the defaults filled in; errors name the options."""
    if scoring not in RULES:
        raise InputError.about(f"{{scoring}} must be one of {', '.join(RULES)}, got {scoring!r}")
    if context is None:
        context = default_context(manifest)
    if not _is_int(context) or context < 2:
        raise InputError.about(f"{{context}} must be an integer >= 2, got {context!r}")
    if context > manifest.context_length:
        raise InputError.about(f"{{context}} {context} is larger than the context length {manifest.context_length} "
                               f"of {manifest.name}")
    if scoring == LLAMA_CPP:
        if stride is not None:
            raise InputError.about("{stride} does not apply to {scoring} llama.cpp (its chunks do not overlap)")
    else:
        stride = context // 2 if stride is None else stride
        if not _is_int(stride) or not 1 <= stride <= context:
            raise InputError.about(f"{{stride}} must be in [1, {{context}} = {context}], got {stride!r}")
    if max_tokens is not None and (not _is_int(max_tokens) or max_tokens < 2):
        raise InputError.about(f"{{max_tokens}} must be an integer >= 2, got {max_tokens!r}")
    return context, stride


def plan_windows(n_tokens: int, context: int, stride: int | None, scoring: str = STRIDED) -> list[Window]:
    """The windows over n_tokens ids; see the module's docstring for the two rules."""
    if scoring == LLAMA_CPP:
        first = context // 2 + 1
        return [Window(i * context, (i + 1) * context, i * context + first) for i in range(n_tokens // context)]
    assert stride is not None
    windows: list[Window] = []
    scored_to = 1  # the first token has nothing before it to predict it from
    for start in range(0, n_tokens, stride):
        stop = min(start + context, n_tokens)
        first = max(scored_to, start + 1)  # a window's first token has nothing before it in the window
        if stop > first:
            windows.append(Window(start, stop, first))
            scored_to = stop
        if stop == n_tokens:
            break
    return windows


def token_nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """-log softmax(logits)[target] per row, in float64 (logits float32 (rows, vocab))."""
    out = np.empty(len(targets), dtype=np.float64)
    for i in range(0, len(targets), SOFTMAX_ROWS):
        rows = logits[i : i + SOFTMAX_ROWS].astype(np.float64)
        peak = rows.max(axis=1, keepdims=True)
        lse = peak[:, 0] + np.log(np.exp(rows - peak).sum(axis=1))
        out[i : i + SOFTMAX_ROWS] = lse - rows[np.arange(len(rows)), targets[i : i + SOFTMAX_ROWS]]
    return out


def perplexity(engine: Engine, ids: Sequence[int], context: int | None = None, stride: int | None = None,
               scoring: str = STRIDED, max_tokens: int | None = None,
               progress: Progress | None = None) -> PerplexityResult:
    """Perplexity of the token ids `ids` under the engine's model (see the module's docstring). The engine's KV cache
    must hold `context` tokens (`Engine.load(context_length=...)`); its sequences are cleared."""
    context, stride = check_options(engine.manifest, context, stride, scoring, max_tokens)
    runner = engine.runner
    if context > runner.context_length:
        raise InputError.about(f"{{context}} {context} is larger than the engine's KV cache ({runner.context_length} "
                               f"tokens): load it with context_length >= {context}")
    tokens = runner.check_tokens(list(ids))
    total = int(tokens.size)
    if max_tokens is not None:
        tokens = tokens[:max_tokens]
    check_token_count(tokens.size, context, scoring, "the token ids")
    windows = plan_windows(tokens.size, context, stride, scoring)
    bos = engine.tokenizer.bos_token_id if engine.tokenizer is not None and engine.tokenizer.info.add_bos_token \
        else None
    nll_sum, scored, evaluated = 0.0, 0, 0
    started = time.perf_counter()
    for done, w in enumerate(windows, 1):
        window = tokens[w.start : w.stop]
        if scoring == LLAMA_CPP and bos is not None:
            window = window.copy()
            window[0] = bos
        positions = np.arange(w.first_scored - 1, w.stop - 1) - w.start
        runner.reset()
        runner.add_sequence(SEQ)
        try:
            logits = runner.prefill_at(SEQ, window, positions)
        finally:
            runner.remove_sequence(SEQ)
        nll_sum += float(token_nll(logits, tokens[w.first_scored : w.stop]).sum())
        scored += w.scored
        evaluated += window.size
        if progress is not None:
            progress(done, len(windows), math.exp(nll_sum / scored))
    seconds = time.perf_counter() - started
    mean = nll_sum / scored
    return PerplexityResult(perplexity=math.exp(mean), mean_nll=mean, tokens_scored=scored, windows=len(windows),
                            tokens_evaluated=evaluated, tokens_in_text=total, context=context, stride=stride,
                            scoring=scoring, seconds=seconds)


def check_token_count(n_tokens: int, context: int, scoring: str, what: str) -> None:
    """Enough tokens for one window of the rule (`what` names them: the file, or "the token ids")."""
    if scoring == LLAMA_CPP and n_tokens < context:
        raise InputError.about(f"{what}: {n_tokens} token(s), but {{scoring}} llama.cpp needs at least one chunk of "
                               f"{{context}} = {context} tokens")
    if n_tokens < 2:
        raise InputError(f"{what}: {n_tokens} token(s), but perplexity needs at least 2")


def read_text(path: str | Path) -> str:
    """The file to evaluate, as UTF-8 text; one-line errors naming it."""
    path = Path(path)
    if not path.exists():
        raise InputError.about(f"{{perplexity}} {path}: no such file")
    if not path.is_file():
        raise InputError.about(f"{{perplexity}} {path}: not a file")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise InputError.about(f"{{perplexity}} {path}: not UTF-8 text (byte {err.start})") from None
    except OSError as err:
        raise InputError.about(f"{{perplexity}} {path}: cannot read it ({err.strerror})") from None


def artifact_tokenizer(folder: str | Path, manifest: Manifest) -> Tokenizer:
    """The artifact's tokenizer, without loading the model (so text problems show before the load)."""
    from .tokenizer import Tokenizer

    if manifest.tokenizer is None:
        raise ArtifactError(f"artifact {manifest.name} has no tokenizer: `ember eval --perplexity` tokenizes the "
                            f"text with the artifact's own (use ember.runtime.perplexity.perplexity with token ids)")
    return Tokenizer(Path(folder) / manifest.tokenizer.file, manifest.tokenizer)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
