"""`ember eval --perplexity`: the windows of both scoring rules, the float64 log-softmax and the option checks
(no model here; the numbers are checked against transformers in tests/e2e/test_hf_parity.py and on SmolLM2 in
tests/e2e/test_smollm2.py)."""
from __future__ import annotations

import numpy as np
import pytest

from ember.errors import InputError
from ember.runtime.perplexity import LLAMA_CPP, check_options, check_token_count, plan_windows, read_text, token_nll


class FakeManifest:
    name, context_length = "tiny", 1024


@pytest.mark.parametrize("n,context,stride", [(61, 16, 6), (64, 16, 8), (17, 16, 8), (16, 16, 8), (2, 16, 8),
                                              (100, 10, 10), (100, 10, 1), (1000, 512, 256)])
def test_strided_windows_score_every_token_but_the_first_once_with_enough_context(n, context, stride):
    windows = plan_windows(n, context, stride)
    scored = [t for w in windows for t in range(w.first_scored, w.stop)]
    # stride = context: windows side by side, the first token of each is unscored (nothing before it in its window)
    assert scored == [t for t in range(1, n) if stride < context or t % context]
    for i, w in enumerate(windows):
        assert w.stop - w.start <= context and w.start <= w.first_scored - 1
        if i:  # after the first window every scored token has context - stride tokens or more before it
            assert w.first_scored - w.start >= context - stride
    assert windows[-1].stop == n


def test_llama_cpp_windows_are_whole_chunks_scoring_their_second_half_but_one():
    windows = plan_windows(4 * 512 + 100, 512, None, LLAMA_CPP)
    assert [(w.start, w.stop, w.first_scored) for w in windows] == [(i * 512, (i + 1) * 512, i * 512 + 257)
                                                                  for i in range(4)]
    assert sum(w.scored for w in windows) == 4 * (512 - 256 - 1)  # llama-perplexity's count
    assert [w.scored for w in plan_windows(33, 11, None, LLAMA_CPP)] == [11 - 5 - 1] * 3  # odd context


def test_token_nll_is_a_float64_log_softmax():
    rng = np.random.default_rng(0)
    logits = (rng.standard_normal((130, 1000)) * 30).astype(np.float32)  # large logits: no overflow
    targets = rng.integers(0, 1000, 130)
    x = logits.astype(np.float64)
    ref = np.log(np.exp(x - x.max(1, keepdims=True)).sum(1)) + x.max(1) - x[np.arange(130), targets]
    np.testing.assert_allclose(token_nll(logits, targets), ref, rtol=1e-12)


def test_options_default_and_are_checked():
    m = FakeManifest()
    assert check_options(m, None, None, "strided", None) == (512, 256)
    assert check_options(m, 100, None, "strided", None) == (100, 50)
    assert check_options(m, 100, None, LLAMA_CPP, 1000) == (100, None)
    small = FakeManifest()
    small.context_length = 128
    assert check_options(small, None, None, "strided", None) == (128, 64)
    for args, message in [((2048, None, "strided", None), "--context 2048 is larger than the context length 1024"),
                          ((1, None, "strided", None), "--context must be an integer >= 2"),
                          ((100, 101, "strided", None), "--stride must be in [1, --context = 100]"),
                          ((100, 50, LLAMA_CPP, None), "--stride does not apply to --scoring llama.cpp"),
                          ((100, None, "mean", None), "--scoring must be one of strided, llama.cpp"),
                          ((100, None, "strided", 1), "--max-tokens must be an integer >= 2")]:
        with pytest.raises(InputError) as err:
            check_options(m, *args)
        assert message in err.value.cli_message
    with pytest.raises(InputError, match="x.txt: 511 token.*--scoring llama.cpp needs at least one chunk of "
                                         "--context = 512"):
        raise_cli(check_token_count, 511, 512, LLAMA_CPP, "x.txt")
    with pytest.raises(InputError, match="x.txt: 1 token.*needs at least 2"):
        check_token_count(1, 512, "strided", "x.txt")


def test_text_file_errors_name_the_file(tmp_path):
    with pytest.raises(InputError, match="--perplexity .*nope.txt: no such file"):
        raise_cli(read_text, tmp_path / "nope.txt")
    with pytest.raises(InputError, match="not a file"):
        raise_cli(read_text, tmp_path)
    (tmp_path / "bin.txt").write_bytes(b"ok \xff\xfe")
    with pytest.raises(InputError, match="not UTF-8 text"):
        raise_cli(read_text, tmp_path / "bin.txt")


def raise_cli(fn, *args):
    try:
        fn(*args)
    except InputError as err:  # the command-line spelling, as `ember eval` prints it
        raise InputError(err.cli_message) from None
