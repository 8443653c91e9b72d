#!/usr/bin/env python3
"""The cuda device sampler (targets/cuda/kernels/sample.cuh) against the host Sampler (runtime/sampler.py).

Here:   python tools/sample_check.py build DIR
        DIR/sampler.so: a library holding only the `sample` / `sample_reset` entry points (as cuda artifacts
        export them: the split kernel) and `sample_row` (the one-block-per-row kernel, for comparison), and
        DIR/tiny-cuda: a tiny llama compiled for cuda:sm_90 (q4f16), for the runtime path.
On the GPU (runtime-only TVM, torch):  python tools/sample_check.py run DIR [OUT.jsonl]
        Three parts, each in a child process with a time limit (a kernel that hangs costs its part, not the run):
        "split" (the checks below on the split kernel, split == row on large rows, and the timing of both),
        "row" (the same checks on the row kernel; its timing too when the split part failed), "runtime".
        greedy == numpy.argmax (b 1 and 16, vocab 128256 and 151936, ties and a NaN); per sampling setting, the
        empirical distribution of 20000 draws (one call of 20000 rows, one step each) against the host's exact
        distribution by total variation, under a bound from the null distribution of that statistic; kept counts
        equal to the host's on many random rows (ties included); seeded calls reproduce; the penalty table after
        reset + sampling; time per call at b 1 and 16 on vocab 128256; the tiny artifact's generation with the
        device sampler equals the host path's (greedy) and reproduces (seeded). One JSON line per check.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

TINY = ("LlamaConfig", {"vocab_size": 256, "hidden_size": 256, "intermediate_size": 704, "num_hidden_layers": 2,
                        "num_attention_heads": 4, "num_key_value_heads": 2})
DRAWS = 20000
SMALL_VOCAB = 1000
BIG_VOCABS = (128256, 151936)
TIMING_CALLS = 200
VARIANT_FUNCTIONS = {"split": "sample", "row": "sample_row"}
PART_TIMEOUT_S = {"split": 110, "row": 70, "runtime": 70}  # all three: give the device call >= 270 s


def build(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    code = ("import sys\nfrom ember.targets.cuda.stub_driver import prepare_cuda_compile_process\n"
            "prepare_cuda_compile_process()\nimport tvm\nfrom ember.targets.cuda.sampling import add_sampler\n"
            "from ember.targets.cuda.pipeline import build_cuda\n"
            "mod = add_sampler(tvm.IRModule(), variant='split')\n"
            "mod = add_sampler(mod, variant='row', name='sample_row', reset=False)\n"
            "build_cuda(mod, ['sm_90']).export_library(sys.argv[1])\n")
    subprocess.run([sys.executable, "-c", code, str(root / "sampler.so")], check=True)
    print(f"built {root / 'sampler.so'}", flush=True)
    import torch
    import transformers

    torch.manual_seed(1)
    cls, kwargs = TINY
    hf = transformers.AutoModelForCausalLM.from_config(getattr(transformers, cls)(**kwargs))
    hf.save_pretrained(root / "hf")
    subprocess.run(["ember", "compile", "--model", str(root / "hf"), "--quant", "q4f16", "-o", str(root / "tiny-cuda"),
                    "--force", "--target", "cuda:sm_90"], check=True, stdout=subprocess.DEVNULL)
    print(f"built {root / 'tiny-cuda'}", flush=True)


# -- the run side ------------------------------------------------------------------------------------------------
class Device:
    def __init__(self, lib: Path, variant: str = "split") -> None:
        import torch  # noqa: F401  (before tvm, as tools/gemv_bench.py does)
        from ember.runtime.tvm_import import ensure_device_runtime, import_tvm

        tvm = import_tvm()
        ensure_device_runtime("cuda")
        from tvm.runtime.vm import VirtualMachine

        self.tvm = tvm
        self.dev = tvm.cuda(0)
        self.vm = VirtualMachine(tvm.runtime.load_module(str(lib)), self.dev)
        self.variant = variant
        self.fns = {v: self.vm[name] for v, name in VARIANT_FUNCTIONS.items()}
        self.sample_fn, self.reset_fn = self.fns[variant], self.vm["sample_reset"]

    def put(self, a: np.ndarray):
        return self.tvm.runtime.tensor(np.ascontiguousarray(a), self.dev)

    def tables(self, slots: int, vocab: int):
        return self.put(np.zeros((slots, vocab), np.int32))

    def sample(self, logits_dev, params: np.ndarray, counts_dev, variant: str | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        from ember.runtime.sampler import DEVICE_INFO_FIELDS

        b = params.shape[0]
        ids = self.put(np.full(b, -1, np.int32))
        info = self.put(np.zeros((b, len(DEVICE_INFO_FIELDS)), np.int32))
        fn = self.sample_fn if variant is None else self.fns[variant]
        fn(logits_dev, self.put(params), counts_dev, ids, info)
        return ids.numpy(), info.numpy()


def rows(params_list, seed: int = 7, steps=None, slot: int = 0, flags: int = 0) -> np.ndarray:
    from ember.runtime.sampler import DEVICE_PARAM_FIELDS, device_params

    out = np.zeros((len(params_list), len(DEVICE_PARAM_FIELDS)), np.float32)
    for i, p in enumerate(params_list):
        device_params(p, seed, slot, i if steps is None else steps[i], out=out[i])
        out[i].view(np.int32)[DEVICE_PARAM_FIELDS.index("flags")] = flags
    return out


VARIANT = {"name": None}  # the kernel the current part checks (tagged onto its records)


def emit(out, record: dict) -> None:
    if VARIANT["name"] and "variant" not in record:
        record = {"variant": VARIANT["name"], **record}
    line = json.dumps(record)
    print(line, flush=True)
    out.write(line + "\n")
    out.flush()


def check_greedy(d: Device, out) -> bool:
    from ember.runtime.sampler import SamplingParams

    rng = np.random.default_rng(0)
    ok = True
    for vocab in BIG_VOCABS:
        for b in (1, 16):
            x = (rng.standard_normal((b, vocab)) * 3).astype(np.float32)
            for r in range(b):  # ties at the max (the lowest id must win), and low-precision duplicates
                top = x[r].max() + 1.0
                x[r, rng.choice(vocab, size=1 + r % 4, replace=False)] = top
            if b > 1:
                x[1, 5000] = np.nan  # numpy.argmax returns the first NaN
                x[2] = np.round(x[2])
            ids, _ = d.sample(d.put(x[:, None, :]), rows([SamplingParams()] * b), d.tables(1, vocab))
            want = x.argmax(axis=1)
            good = bool(np.array_equal(ids, want))
            ok &= good
            emit(out, {"check": "greedy", "vocab": vocab, "batch": b, "ok": good,
                       "mismatches": int(np.count_nonzero(ids != want))})
    return ok


def null_tv_bound(probs: np.ndarray, n: int, rng: np.random.Generator, trials: int = 400) -> tuple[float, float]:
    """The total variation between n exact draws' frequencies and `probs`: (mean, 99.9th percentile + a 10 % margin)
    over `trials` multinomial samples; a correct sampler exceeds the bound with probability ~1e-3."""
    tv = [0.5 * np.abs(rng.multinomial(n, probs / probs.sum()) / n - probs).sum() for _ in range(trials)]
    return float(np.mean(tv)), float(np.quantile(tv, 0.999) * 1.1)


SETTINGS = [  # (name, SamplingParams kwargs, logits scale, quantize (ties), prompt/generated history)
    ("temperature 1", {"temperature": 1.0}, 1.0, False, False),
    ("temperature 0.7", {"temperature": 0.7}, 1.5, False, False),
    ("top-k 20", {"temperature": 1.0, "top_k": 20}, 1.0, False, False),
    ("top-k 20 ties", {"temperature": 1.0, "top_k": 20}, 1.0, True, False),
    ("top-p 0.8", {"temperature": 1.0, "top_p": 0.8}, 2.0, False, False),
    ("top-p 0.5 ties", {"temperature": 0.9, "top_p": 0.5}, 2.0, True, False),
    ("min-p 0.1", {"temperature": 1.0, "min_p": 0.1}, 2.0, False, False),
    ("top-k 50 top-p 0.9 min-p 0.05", {"temperature": 0.8, "top_k": 50, "top_p": 0.9, "min_p": 0.05}, 2.0, False,
     False),
    ("penalties", {"temperature": 1.0, "repetition_penalty": 1.3, "presence_penalty": 0.5,
                   "frequency_penalty": 0.3}, 2.0, False, True),
    ("penalties greedy", {"temperature": 0.0, "repetition_penalty": 1.5, "presence_penalty": 0.4,
                          "frequency_penalty": 0.6}, 1.0, False, True),
]


def check_distributions(d: Device, out) -> bool:
    from ember.runtime.sampler import SamplingParams, logits_to_probs

    rng = np.random.default_rng(1)
    ok = True
    for name, kwargs, scale, ties, history in SETTINGS:
        params = SamplingParams(**kwargs)
        x = (rng.standard_normal(SMALL_VOCAB) * scale).astype(np.float32)
        if ties:
            x = np.round(x * 2) / 2
        counts = np.zeros((1, SMALL_VOCAB), np.int32)
        prompt: list[int] = []
        generated: list[int] = []
        if history:  # the most likely tokens, so that the penalties move the distribution
            order = np.argsort(-x)
            prompt = [int(t) for t in order[:6]] + [int(t) for t in rng.choice(SMALL_VOCAB, 10)]
            generated = [int(order[1])] * 3 + [int(order[3])] * 2 + [int(order[8])]
            x[order[1]] = -abs(x[order[1]])  # a negative seen logit: multiplied by the repetition penalty
        reset_counts = d.tables(1, SMALL_VOCAB)
        if prompt:  # the kernel flags the prompt's tokens
            d.reset_fn(reset_counts, d.put(np.array(prompt, np.int32)), d.put(np.zeros(1, np.int32)))
        table = reset_counts.numpy()
        for t in generated:
            table[0, t] += 1
        counts_dev = d.put(table)
        want = logits_to_probs(x, params, prompt=prompt, generated=generated).astype(np.float64)
        logits_dev = d.put(np.broadcast_to(x, (DRAWS, 1, SMALL_VOCAB)))
        ids, info = d.sample(logits_dev, rows([params] * DRAWS), counts_dev)
        freq = np.bincount(ids, minlength=SMALL_VOCAB) / DRAWS
        tv = 0.5 * float(np.abs(freq - want).sum())
        outside = int(np.count_nonzero(want[ids] == 0))
        kept_host = int(np.count_nonzero(want)) if not params.greedy else 1
        mean, bound = null_tv_bound(want, DRAWS, rng)
        again, _ = d.sample(logits_dev, rows([params] * DRAWS), counts_dev)
        other, _ = d.sample(logits_dev, rows([params] * DRAWS, seed=8), counts_dev)
        table_after = counts_dev.numpy()
        good = (tv <= bound and outside == 0 and np.array_equal(ids, again) and np.array_equal(table_after, table)
                and (params.greedy or not np.array_equal(ids, other)))
        if not params.greedy:
            good &= int(info[0, 0]) == kept_host
        ok &= bool(good)
        emit(out, {"check": "distribution", "setting": name, "params": kwargs, "vocab": SMALL_VOCAB, "draws": DRAWS,
                   "tv": tv, "tv_null_mean": mean, "tv_bound": bound, "outside_support": outside,
                   "kept_device": int(info[0, 0]), "kept_host": kept_host,
                   "reproduced": bool(np.array_equal(ids, again)), "other_seed_differs": bool(not np.array_equal(ids, other)),
                   "ok": bool(good)})
    return ok


def check_kept_counts(d: Device, out) -> bool:
    """Random rows, random settings (a third with quantized logits: ties at the cuts): the kernel's kept count
    against the host's for each row."""
    from ember.runtime.sampler import Sampler, SamplingParams

    rng = np.random.default_rng(2)
    ok = True
    for vocab, n in ((4096, 600), (32000, 300), (128256, 64)):
        x = (rng.standard_normal((n, vocab)) * rng.uniform(0.5, 4, (n, 1))).astype(np.float32)
        x[::3] = np.round(x[::3] * 2) / 2
        plist = []
        for i in range(n):
            kind = i % 4
            plist.append(SamplingParams(
                temperature=float(rng.uniform(0.3, 1.5)),
                top_k=int(rng.integers(1, 2000)) if kind in (0, 3) else 0,
                top_p=float(rng.uniform(0.05, 0.99)) if kind in (1, 3) else 1.0,
                min_p=float(rng.uniform(0.001, 0.3)) if kind in (2, 3) else 0.0))
        _, info = d.sample(d.put(x[:, None, :]), rows(plist), d.tables(1, vocab))
        host = []
        for i in range(n):
            ids, _ = Sampler(plist[i]).distribution(x[i])
            host.append(vocab if ids is None else ids.size)
        host = np.array(host)
        diff = info[:, 0] - host
        bad = np.flatnonzero(diff)
        good = bad.size == 0
        ok &= good
        emit(out, {"check": "kept_counts", "vocab": vocab, "rows": n, "mismatched_rows": int(bad.size),
                   "max_abs_diff": int(np.abs(diff).max()) if n else 0,
                   "examples": [{"row": int(i), "device": int(info[i, 0]), "host": int(host[i]),
                                 "params": {k: getattr(plist[i], k) for k in ("temperature", "top_k", "top_p", "min_p")},
                                 "ties": bool(i % 3 == 0)} for i in bad[:5]],
                   "ok": bool(good)})
    return ok


def check_penalty_table(d: Device, out) -> bool:
    from ember.runtime.sampler import SamplingParams

    vocab, slots = 5000, 4
    counts = d.tables(slots, vocab)
    prompt = np.array([3, 17, 17, 4999, 0], np.int32)
    d.reset_fn(counts, d.put(prompt), d.put(np.array([2], np.int32)))
    x = np.random.default_rng(3).standard_normal((1, 1, vocab)).astype(np.float32)
    picks = []
    logits = d.put(x)
    for step in range(50):
        ids, _ = d.sample(logits, rows([SamplingParams(temperature=1.0)], steps=[step], slot=2, flags=1), counts)
        picks.append(int(ids[0]))
    table = counts.numpy()
    want = np.zeros((slots, vocab), np.int64)
    want[2, prompt] = 1 << 30
    np.add.at(want[2], picks, 1)
    good = bool(np.array_equal(table, want))
    emit(out, {"check": "penalty_table", "ok": good, "distinct_picks": len(set(picks))})
    return good


def time_settings(d: Device, out, variants: tuple[str, ...] = ("split", "row")) -> None:
    import torch
    from ember.runtime.sampler import Sampler, SamplingParams

    settings = [("greedy", {}), ("temperature", {"temperature": 0.8}), ("top-k 50", {"temperature": 0.8, "top_k": 50}),
                ("top-p 0.9", {"temperature": 0.8, "top_p": 0.9}), ("min-p 0.05", {"temperature": 0.8, "min_p": 0.05}),
                ("top-k 50 + top-p 0.9", {"temperature": 0.8, "top_k": 50, "top_p": 0.9}),
                ("top-k 50 + top-p 0.9 + min-p 0.05", {"temperature": 0.8, "top_k": 50, "top_p": 0.9, "min_p": 0.05}),
                ("penalties + top-p 0.9", {"temperature": 0.8, "top_p": 0.9, "repetition_penalty": 1.1,
                                           "presence_penalty": 0.2, "frequency_penalty": 0.2}),
                ("greedy + penalties", {"repetition_penalty": 1.1, "frequency_penalty": 0.2})]
    vocab = 128256
    rng = np.random.default_rng(4)
    for b, half in ((1, False), (16, False), (1, True)):
        x = (rng.standard_normal((b, 1, vocab)) * 2.5).astype(np.float32)
        if half:  # logits of a float16 LM head: exact ties at the top-p cut (the tie path)
            x = x.astype(np.float16).astype(np.float32)
        logits = d.put(x)
        counts = d.tables(b, vocab)
        for r in range(b):
            d.reset_fn(counts, d.put(rng.integers(0, vocab, 200).astype(np.int32)), d.put(np.array([r], np.int32)))
        ids = d.put(np.zeros(b, np.int32))
        info = d.put(np.zeros((b, 3), np.int32))
        for name, kwargs in settings:
            if half and "top_p" not in kwargs:
                continue
            for variant in variants:
                fn = d.fns[variant]
                params = SamplingParams(**kwargs)
                p = rows([params] * b)
                for r in range(b):
                    p[r].view(np.int32)[10] = r  # own slot
                p_dev = d.put(p)
                for _ in range(10):
                    fn(logits, p_dev, counts, ids, info)
                d.dev.sync()
                start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                t0 = time.perf_counter()
                start.record()
                for _ in range(TIMING_CALLS):
                    fn(logits, p_dev, counts, ids, info)
                stop.record()
                d.dev.sync()
                torch.cuda.synchronize()
                wall = (time.perf_counter() - t0) / TIMING_CALLS
                event = start.elapsed_time(stop) / TIMING_CALLS * 1e-3
                # one call then its ids to the host: what a decode step pays
                t1 = time.perf_counter()
                for _ in range(50):
                    fn(logits, p_dev, counts, ids, info)
                    ids.numpy()
                with_copy = (time.perf_counter() - t1) / 50
                label = name + (" (float16 logits)" if half else "")
                record = {"check": "timing", "variant": variant, "setting": label, "batch": b, "vocab": vocab,
                          "calls": TIMING_CALLS, "us_per_call_events": event * 1e6, "us_per_call_wall": wall * 1e6,
                          "us_per_call_with_ids_to_host": with_copy * 1e6, "kept_row0": int(info.numpy()[0, 0])}
                if b == 1 and variant == variants[0]:  # the host path for the same row: logits to the host, numpy
                    host_x = x[0, 0]
                    s = Sampler(params)
                    s(host_x)
                    t2 = time.perf_counter()
                    for _ in range(20):
                        s(host_x)
                    record["host_sampler_us"] = (time.perf_counter() - t2) / 20 * 1e6
                emit(out, record)
        t3 = time.perf_counter()
        for _ in range(50):
            logits.numpy()
        emit(out, {"check": "timing", "setting": "logits to host (pageable, numpy)", "batch": b, "vocab": vocab,
                   "us_per_call_wall": (time.perf_counter() - t3) / 50 * 1e6})


def check_split_vs_row(d: Device, out) -> bool:
    """Both kernels on the same large rows and seeds, at batch sizes on both sides of the split kernel's grid
    choices (32 blocks per row up to 8 rows, 16 above; 16 rows at once): the same ids wherever the kept sets agree
    (the same Gumbel noise), and kept sets that differ only on top-p rows, by the float32 rounding of the row
    kernel's masses (the split kernel sums exactly)."""
    from ember.runtime.sampler import SamplingParams

    rng = np.random.default_rng(9)
    ok = True
    vocab = 128256
    for b in (1, 5, 8, 9, 16, 33):
        x = (rng.standard_normal((b, 1, vocab)) * rng.uniform(1, 4, (b, 1, 1))).astype(np.float32)
        x[::2] = x[::2].astype(np.float16).astype(np.float32)  # ties at the cuts
        plist = []
        for i in range(b):
            kind = i % 6
            plist.append(SamplingParams(
                temperature=0.0 if kind == 5 else float(rng.uniform(0.5, 1.2)),
                top_k=int(rng.integers(1, 3000)) if kind in (0, 3) else 0,
                top_p=float(rng.uniform(0.3, 0.98)) if kind in (1, 3) else 1.0,
                min_p=float(rng.uniform(0.01, 0.2)) if kind in (2, 3) else 0.0))
        logits = d.put(x)
        counts = d.tables(1, vocab)
        ids_s, info_s = d.sample(logits, rows(plist), counts, "split")
        ids_r, info_r = d.sample(logits, rows(plist), counts, "row")
        same_kept = info_s[:, 0] == info_r[:, 0]
        top_p_rows = np.array([p.top_p < 1.0 for p in plist])
        bad_kept = np.flatnonzero(~same_kept & ~top_p_rows)
        rounding = np.flatnonzero(~same_kept & top_p_rows)
        bad_ids = np.flatnonzero(same_kept & (ids_s != ids_r))
        in_range = bool(np.all((ids_s >= 0) & (ids_s < vocab)))
        good = bad_kept.size == 0 and bad_ids.size == 0 and rounding.size <= max(1, b // 10) and in_range and bool(
            np.all(np.abs(info_s[rounding, 0] - info_r[rounding, 0]) <= 2))
        ok &= good
        emit(out, {"check": "split_vs_row", "batch": b, "vocab": vocab, "ids_in_range": in_range,
                   "kept_differs_non_top_p": bad_kept.tolist(), "kept_differs_top_p": rounding.tolist(),
                   "kept_split_row": [[int(info_s[i, 0]), int(info_r[i, 0])] for i in rounding[:5]],
                   "ids_differ_same_kept": bad_ids.tolist(), "ok": bool(good)})
    return ok


def check_runtime(root: Path, out) -> bool:
    import ember
    from ember.runtime.generate import generate
    from ember.runtime.sampler import SamplingParams

    engine = ember.load(str(root / "tiny-cuda"), device="cuda")
    runner = engine.runner
    prompt = [1, 5, 9, 33, 100, 7]
    ok = True
    assert runner.has_device_sampler
    greedy = SamplingParams()
    dev_tokens = generate(runner, prompt, max_tokens=24, sampling=greedy).token_ids
    saved = runner._sample
    runner._sample = None  # the host path on the same artifact
    host_tokens = generate(runner, prompt, max_tokens=24, sampling=greedy).token_ids
    pen = SamplingParams(repetition_penalty=1.3, frequency_penalty=0.5)
    host_pen = generate(runner, prompt, max_tokens=24, sampling=pen).token_ids
    runner._sample = saved
    dev_pen = generate(runner, prompt, max_tokens=24, sampling=pen).token_ids
    seeded = SamplingParams(temperature=1.0, top_p=0.9, seed=11)
    a = generate(runner, prompt, max_tokens=24, sampling=seeded)
    b = generate(runner, prompt, max_tokens=24, sampling=seeded)
    good = dev_tokens == host_tokens and a.token_ids == b.token_ids and dev_pen == host_pen
    ok &= good
    emit(out, {"check": "runtime", "greedy_device": dev_tokens, "greedy_host": host_tokens,
               "penalized_greedy_device": dev_pen, "penalized_greedy_host": host_pen,
               "seeded_reproduced": a.token_ids == b.token_ids, "decode_tok_s": a.decode_tokens_per_s, "ok": good})
    return ok


def run_part(part: str, root: Path, out_path: Path) -> int:
    """One part of the run (in this process), appending its JSON lines to out_path."""
    ok = True
    with out_path.open("a") as out:
        if part == "runtime":
            checks, timing = [], None
        else:
            VARIANT["name"] = part
            checks = [check_greedy, check_distributions, check_kept_counts, check_penalty_table]
            if part == "split":
                checks.append(check_split_vs_row)
            timing = ("split", "row") if part == "split" else (("row",) if os.environ.get("SAMPLE_CHECK_TIME_ROW")
                                                               else None)
        d = None if part == "runtime" else Device(root / "sampler.so", part)
        for check in checks:
            try:
                ok &= check(d, out)
            except Exception as err:  # keep going: one device call has to report everything
                ok = False
                emit(out, {"check": check.__name__, "error": repr(err)})
        if timing:
            try:
                time_settings(d, out, timing)
            except Exception as err:
                emit(out, {"check": "timing", "error": repr(err)})
        if part == "runtime":
            try:
                ok &= check_runtime(root, out)
            except Exception as err:
                ok = False
                emit(out, {"check": "runtime", "error": repr(err)})
    return 0 if ok else 1


def run(root: Path, out_path: Path) -> int:
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text("")
    results = {}
    for part in ("split", "row", "runtime"):
        env = dict(os.environ)
        if part == "row" and results.get("split") not in (0, 1):  # the split part died: time the row kernel
            env["SAMPLE_CHECK_TIME_ROW"] = "1"
        cmd = [sys.executable, str(Path(__file__).resolve()), "part", part, str(root), str(out_path)]
        t0 = time.perf_counter()
        try:
            results[part] = subprocess.run(cmd, env=env, timeout=PART_TIMEOUT_S[part]).returncode
        except subprocess.TimeoutExpired:
            results[part] = "timeout"
        with out_path.open("a") as out:
            emit(out, {"check": "part", "part": part, "result": results[part],
                       "seconds": round(time.perf_counter() - t0, 1), "ok": results[part] == 0})
    ok = all(r == 0 for r in results.values())
    with out_path.open("a") as out:
        emit(out, {"check": "all", "parts": results, "ok": ok})
    return 0 if ok else 1


def main(argv: list[str]) -> int:
    if len(argv) == 4 and argv[0] == "part":
        return run_part(argv[1], Path(argv[2]), Path(argv[3]))
    if len(argv) < 2 or argv[0] not in ("build", "run"):
        print(__doc__)
        return 2
    root = Path(argv[1])
    if argv[0] == "build":
        build(root)
        return 0
    out = Path(argv[2]) if len(argv) > 2 else Path(os.environ.get("OUT", ".")) / "sample_check.jsonl"
    return run(root, out)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
