"""A numpy model of the split device sampler's select and draw (`run_split` in targets/cuda/kernels/sample.cuh), step
by step as the kernel does it: the row cut into slices, per-slice histograms merged by addition, radix levels of
11 + 11 + 10 bits that stop early, top-p masses in 64-bit fixed point, ties at a top-p cut resolved per slice from
the counts of the slices before, min-p, and the Gumbel-max draw from the splitmix64 hash of (seed, step, token).
The one difference from the kernel: exp and the logs are numpy's float32, not __expf / log1pf / __logf."""
from __future__ import annotations

import numpy as np

BINS = 2048
FIX_SCALE = np.float32(2.0**40)
LEVELS = ((21, 2048), (10, 2048), (0, 1024))  # (shift, bins) per radix level
M64 = (1 << 64) - 1


def float_key(f: np.ndarray) -> np.ndarray:
    """Order-preserving uint32 keys of float32 values, -0 and +0 one key (sample.cuh float_key)."""
    b = np.ascontiguousarray(f, np.float32).view(np.uint32).copy()
    b[b == 0x80000000] = 0
    return np.where(b & 0x80000000, ~b, b | 0x80000000).astype(np.uint32)


def key_float(k: int) -> np.float32:
    k = int(k)
    bits = (k & 0x7FFFFFFF) if k & 0x80000000 else (~k & 0xFFFFFFFF)
    return np.array([bits], np.uint32).view(np.float32)[0]


def fixed_mass(w: np.ndarray) -> np.ndarray:
    """__float2ull_rn(w * 2^40): w * 2^40 is exact in float32, the conversion rounds to nearest even."""
    return np.rint((np.asarray(w, np.float32) * FIX_SCALE).astype(np.float64)).astype(np.uint64)


def find_bin(hist: np.ndarray, cnt: np.ndarray, above: int, need: int) -> tuple[int, int, int]:
    """sample.cuh split_find_bin: the bin, from the top, where the running total reaches need; (bin, total above
    it, its count). Integers: python ints, no rounding."""
    cum = above
    lowest = None
    for b in range(hist.size - 1, -1, -1):
        h = int(hist[b])
        if cnt[b] != 0:
            lowest = b
        if cum < need <= cum + h:
            return b, cum, int(cnt[b])
        cum += h
    b = lowest if lowest is not None else 0  # rounding fallback (not reached with exact sums)
    before = above + int(sum(int(h) for h in hist[b + 1 :]))
    return b, before, int(cnt[b])


def slices(vocab: int, split: int) -> list[tuple[int, int]]:
    per = ((vocab + split - 1) // split + 3) & ~3
    out = []
    for part in range(split):
        lo = min(vocab, part * per)
        out.append((lo, min(vocab, lo + per)))
    return out


def merged_hist(keys: np.ndarray, sel: np.ndarray, shift: int, nb: int, parts: list[tuple[int, int]],
                mass: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None, list[np.ndarray]]:
    """Per-slice histograms of the selected keys' digit, summed (the merge); also each slice's own counts."""
    count = np.zeros(nb, np.int64)
    total = np.zeros(nb, object) if mass is not None else None
    own = []
    for lo, hi in parts:
        k, s = keys[lo:hi], sel[lo:hi]
        digit = (k[s] >> np.uint32(shift)) & np.uint32(nb - 1)
        c = np.bincount(digit, minlength=nb).astype(np.int64)
        own.append(c)
        count += c
        if mass is not None:  # exact: the 32-bit halves' sums stay below 2^53 in float64
            m = mass[lo:hi][s]
            high = np.bincount(digit, (m >> np.uint64(32)).astype(np.float64), minlength=nb)
            low = np.bincount(digit, (m & np.uint64(0xFFFFFFFF)).astype(np.float64), minlength=nb)
            for b in np.flatnonzero(c):
                total[b] += (int(high[b]) << 32) + int(low[b])
    return count, total, own


def select(x: np.ndarray, top_k: int, top_p: float, min_p: float, split: int) -> dict:
    """The kept ids of one row of scaled logits x (float32) and the kernel's report: {"ids", "k_key", "p_key"}."""
    vocab = x.size
    parts = slices(vocab, split)
    xk = float_key(x)
    alive = np.ones(vocab, bool)
    k_floor = 0
    if 0 < top_k < vocab:
        prefix, above = 0, 0
        for level, (shift, nb) in enumerate(LEVELS):
            up = LEVELS[level - 1][0] if level else 32
            sel = (xk >> np.uint32(up)) == prefix if level else np.ones(vocab, bool)
            count, _, _ = merged_hist(xk, sel, shift, nb, parts)
            b, before, c = find_bin(count, count, above, top_k)
            prefix = (prefix << (10 if level == 2 else 11)) | b
            if level == 2 or before + c == top_k:
                k_floor = prefix << shift
                break
            above = before
        alive &= xk >= np.uint32(k_floor)
    m = np.float32(x.max())
    w = np.exp(x - m).astype(np.float32)
    wk = float_key(w)
    p_floor, tie_key, last_tie = 0, None, [np.iinfo(np.int32).max] * split
    if top_p < 1.0:
        fixed = fixed_mass(w)
        prefix, above, need = 0, 0, 0
        for level, (shift, nb) in enumerate(LEVELS):
            up = LEVELS[level - 1][0] if level else 32
            sel = alive & ((wk >> np.uint32(up)) == prefix) if level else alive.copy()
            count, mass, own = merged_hist(wk, sel, shift, nb, parts, fixed)
            if level == 0:
                total = int(sum(int(v) for v in mass))
                need = int(float(total) * float(np.float32(top_p)) * (1.0 - 1e-6))
            b, before, c = find_bin(mass, count, above, need)
            prefix = (prefix << (10 if level == 2 else 11)) | b
            if c == 1 or level == 2:
                p_floor = prefix << shift
                if level == 2 and c > 1:
                    q = int(fixed_mass(np.array([key_float(prefix)]))[0])
                    want = c if q == 0 else (need - before + q - 1) // q
                    ties = max(1, min(c, want))
                    if ties < c:
                        tie_key = prefix
                        mine = [int(o[b]) for o in own]
                        for part, (lo, hi) in enumerate(parts):
                            room = ties - sum(mine[:part])
                            if room <= 0:
                                last_tie[part] = -1
                            elif room < mine[part]:
                                eq = np.flatnonzero(alive[lo:hi] & (wk[lo:hi] == np.uint32(prefix)))
                                last_tie[part] = lo + int(eq[room - 1])
                break
            above = before
        alive &= wk >= np.uint32(p_floor)
        if tie_key is not None:
            owner = np.empty(vocab, np.int64)
            for part, (lo, hi) in enumerate(parts):
                owner[lo:hi] = last_tie[part]
            alive &= ~((wk == np.uint32(tie_key)) & (np.arange(vocab) > owner))
    if min_p > 0.0:
        alive &= w >= np.float32(min_p)
    return {"ids": np.flatnonzero(alive), "k_key": k_floor, "p_key": p_floor, "w": w, "m": m}


# -- the draw -----------------------------------------------------------------------------------------------------
def mix64(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, np.uint64)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def row_noise(seed: int, step: int) -> np.uint64:
    s = mix64(np.array([seed & M64], np.uint64))[0]
    with np.errstate(over="ignore"):
        return mix64(np.array([s ^ np.uint64((0x632BE59BD9B4E019 * (step + 1)) & M64)], np.uint64))[0]


def gumbel(noise: np.uint64, ids: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        h = mix64(noise + (ids.astype(np.uint64) + np.uint64(1)) * np.uint64(0x9E3779B97F4A7C15))
    v = np.maximum(h.astype(np.float32) * np.float32(5.421010862427522e-20), np.float32(1e-30))
    e = -np.log1p(-v)
    return (-np.log(e)).astype(np.float32)


def draw(x: np.ndarray, kept: dict, seed: int, step: int) -> int:
    """Gumbel-max over the kept ids: the largest (x - max) + noise, the lowest id on ties (as the kernel's keys)."""
    ids = kept["ids"]
    score = (x[ids] - kept["m"]).astype(np.float32) + gumbel(row_noise(seed, step), ids)
    key = float_key(score.astype(np.float32))
    return int(ids[np.flatnonzero(key == key.max())[0]])
