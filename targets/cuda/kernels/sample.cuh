// ember's token sampler on the device: for each row of float32 logits [b, vocab] (one block of THREADS threads
// per row), penalties, temperature, top-k / top-p / min-p truncation and a seeded draw; writes the token id (and
// what was kept, for checks) and counts the token in the row's slot of the penalty table.
//
// The distribution is runtime/sampler.py's, in this order (penalties as transformers' / OpenAI's processors,
// warpers in transformers' order):
//   l  = logit; if the token was seen (prompt or output) and repetition != 1: l < 0 ? l * r : l / r
//   l -= presence * (generated > 0) + frequency * generated          (generated tokens only)
//   x  = l / temperature  (temperature 0: argmax of l, lowest id on ties, NaN first, as numpy.argmax)
//   top-k keeps x >= the k-th largest x (ties kept)
//   w  = exp(x - max x); top-p keeps the smallest most-likely set of kept w reaching p * (1 - 1e-6) of their
//        sum (among equal w the lower ids first)
//   min-p keeps w >= min_p (w is p / p_max: the max token has w = 1; after top-p, as transformers orders it)
//   the token: argmax over kept of (x - max x) + Gumbel noise (Gumbel-max is an exact draw from w / sum w)
// No sort: the thresholds come from a radix select over the order-preserving bits of x (top-k, counts) and of w
// (top-p, masses), 11 + 11 + 10 bits with 2048-bin histograms in shared memory, stopping as soon as the cut bin
// holds the whole remainder (top-k) or one token (top-p). Each pass reads the row from global memory (L2).
//
// Penalty table: int32 [slots, vocab], entry = generated count | PROMPT_FLAG if the token is in the prompt.
// reset() clears a slot and flags a prompt's tokens; run() adds 1 to the sampled token's entry (params FLAGS bit 0).
// Randomness: a splitmix64 hash of (seed, step, token id): a seeded generation reproduces on any device.
#ifndef EMBER_SAMPLE_CUH
#define EMBER_SAMPLE_CUH
#include <cstdint>

namespace ember {
namespace sample {

// params: float32 [b, PARAMS] per row; the integer fields hold int32 bits (the host writes them through a view)
enum Param : int {
  TEMPERATURE = 0, TOP_K = 1, TOP_P = 2, MIN_P = 3, REPETITION = 4, PRESENCE = 5, FREQUENCY = 6,
  SEED_LO = 7, SEED_HI = 8, STEP = 9, SLOT = 10, FLAGS = 11, PARAMS = 12
};
// info: int32 [b, INFO] per row: tokens kept, the top-k cut key, the top-p cut key (0: no cut)
enum Info : int { KEPT = 0, TOP_K_KEY = 1, TOP_P_KEY = 2, INFO = 3 };
constexpr int PROMPT_FLAG = 1 << 30;
constexpr int COUNT_MASK = PROMPT_FLAG - 1;
constexpr int UPDATE_COUNTS = 1;
constexpr int BINS = 2048;

__device__ __forceinline__ uint32_t float_key(float f) {  // larger float -> larger key; -0 and +0 one key
  uint32_t b = __float_as_uint(f);
  b = b == 0x80000000u ? 0u : b;  // -0 == +0 as numpy compares them (ties at a cut, argmax's first of equals)
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}
__device__ __forceinline__ float key_float(uint32_t k) {
  return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

__device__ __forceinline__ uint64_t mix64(uint64_t z) {  // splitmix64's finalizer
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// Gumbel noise -log(E), E = -log(1 - v) an exponential variate; v from 64 random bits. log1pf keeps E accurate
// near 0, where the largest noise (the one that wins) comes from.
__device__ __forceinline__ float gumbel(uint64_t base, int i) {
  const uint64_t h = mix64(base + (uint64_t)(i + 1) * 0x9e3779b97f4a7c15ull);
  const float v = fmaxf(__ull2float_rn(h) * 5.421010862427522e-20f, 1e-30f);  // h / 2^64
  const float e = -log1pf(-v);
  return -__logf(e);
}

struct Row {
  float temperature, top_p, min_p, repetition, presence, frequency;
  int top_k, slot, flags;
  uint64_t noise;
  bool penalize;
};

__device__ __forceinline__ Row load_row(const float* params, bool have_counts) {
  Row r;
  r.temperature = params[TEMPERATURE];
  r.top_p = params[TOP_P];
  r.min_p = params[MIN_P];
  r.repetition = params[REPETITION];
  r.presence = params[PRESENCE];
  r.frequency = params[FREQUENCY];
  r.top_k = __float_as_int(params[TOP_K]);
  r.slot = __float_as_int(params[SLOT]);
  r.flags = __float_as_int(params[FLAGS]);
  const uint64_t seed = (uint64_t)(uint32_t)__float_as_int(params[SEED_LO]) |
                        ((uint64_t)(uint32_t)__float_as_int(params[SEED_HI]) << 32);
  const uint32_t step = (uint32_t)__float_as_int(params[STEP]);
  r.noise = mix64(mix64(seed) ^ (0x632be59bd9b4e019ull * (uint64_t)(step + 1)));
  r.penalize = have_counts && (r.repetition != 1.0f || r.presence != 0.0f || r.frequency != 0.0f);
  return r;
}

// The logit after penalties, rounded op by op as numpy float32 does (no FMA contraction).
__device__ __forceinline__ float penalize(float l, int c, const Row& r) {
  if (c != 0 && r.repetition != 1.0f) l = l < 0.0f ? __fmul_rn(l, r.repetition) : __fdiv_rn(l, r.repetition);
  const int g = c & COUNT_MASK;
  if (g != 0) l = __fsub_rn(l, __fadd_rn(r.presence, __fmul_rn(r.frequency, (float)g)));
  return l;
}

// f(i, l) for every token of the row, l the logit after penalties. 16-byte loads, UNROLL of them in flight per
// thread (one block per row: the loads in flight, not the threads, set how fast a pass reads the row from L2).
template <int THREADS, typename F>
__device__ __forceinline__ void for_each(const float* logits, const int* counts, int vocab, const Row& r, F&& f) {
  constexpr int UNROLL = 4;
  const bool pen = r.penalize;
  int start = 0;
  if (((reinterpret_cast<uintptr_t>(logits) | reinterpret_cast<uintptr_t>(counts)) & 15) == 0) {
    const int n4 = vocab / 4;
    const float4* l4 = reinterpret_cast<const float4*>(logits);
    const int4* c4 = reinterpret_cast<const int4*>(counts);
    int j = threadIdx.x;
    for (; j + (UNROLL - 1) * THREADS < n4; j += UNROLL * THREADS) {
      float4 v[UNROLL];
      int4 c[UNROLL];
#pragma unroll
      for (int u = 0; u < UNROLL; ++u) v[u] = __ldg(l4 + j + u * THREADS);
      if (pen) {
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) c[u] = c4[j + u * THREADS];
      }
#pragma unroll
      for (int u = 0; u < UNROLL; ++u) {
        const int i = 4 * (j + u * THREADS);
        f(i + 0, pen ? penalize(v[u].x, c[u].x, r) : v[u].x);
        f(i + 1, pen ? penalize(v[u].y, c[u].y, r) : v[u].y);
        f(i + 2, pen ? penalize(v[u].z, c[u].z, r) : v[u].z);
        f(i + 3, pen ? penalize(v[u].w, c[u].w, r) : v[u].w);
      }
    }
    for (; j < n4; j += THREADS) {
      const float4 v = __ldg(l4 + j);
      int4 c = make_int4(0, 0, 0, 0);
      if (pen) c = c4[j];
      const int i = 4 * j;
      f(i + 0, pen ? penalize(v.x, c.x, r) : v.x);
      f(i + 1, pen ? penalize(v.y, c.y, r) : v.y);
      f(i + 2, pen ? penalize(v.z, c.z, r) : v.z);
      f(i + 3, pen ? penalize(v.w, c.w, r) : v.w);
    }
    start = 4 * n4;
  }
  for (int i = start + threadIdx.x; i < vocab; i += THREADS) f(i, pen ? penalize(logits[i], counts[i], r) : logits[i]);
}

// -- block reductions and scans ---------------------------------------------------------------------------------
template <int THREADS>
struct Shared {
  uint32_t count[BINS];
  float mass[BINS];
  uint64_t red64[THREADS / 32];
  float redf[THREADS / 32];
  uint32_t redu[THREADS / 32];
  int found_bin, lowest_bin;
  float found_before;
  uint32_t found_count;
};

template <int THREADS, typename S>
__device__ __forceinline__ uint64_t block_max_u64(uint64_t v, S& s) {
  for (int o = 16; o; o >>= 1) {
    const uint64_t other = __shfl_xor_sync(0xffffffffu, v, o);
    v = other > v ? other : v;
  }
  __syncthreads();
  if ((threadIdx.x & 31) == 0) s.red64[threadIdx.x >> 5] = v;
  __syncthreads();
  v = s.red64[0];
  for (int w = 1; w < THREADS / 32; ++w) v = s.red64[w] > v ? s.red64[w] : v;
  return v;
}

template <int THREADS, typename S>
__device__ __forceinline__ float block_max(float v, S& s) {
  for (int o = 16; o; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  __syncthreads();
  if ((threadIdx.x & 31) == 0) s.redf[threadIdx.x >> 5] = v;
  __syncthreads();
  v = s.redf[0];
  for (int w = 1; w < THREADS / 32; ++w) v = fmaxf(v, s.redf[w]);
  return v;
}

template <int THREADS, typename S>
__device__ __forceinline__ uint32_t block_sum_u32(uint32_t v, S& s) {
  for (int o = 16; o; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  __syncthreads();
  if ((threadIdx.x & 31) == 0) s.redu[threadIdx.x >> 5] = v;
  __syncthreads();
  v = 0;
  for (int w = 0; w < THREADS / 32; ++w) v += s.redu[w];
  return v;
}

// Exclusive prefix sum over threads (in thread order) of v.
template <int THREADS, typename T>
__device__ __forceinline__ T block_exclusive_scan(T v, T* warp_totals) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  T inc = v;
  for (int o = 1; o < 32; o <<= 1) {
    const T up = __shfl_up_sync(0xffffffffu, inc, o);
    if (lane >= o) inc += up;
  }
  __syncthreads();
  if (lane == 31) warp_totals[warp] = inc;
  __syncthreads();
  T before = 0;
  for (int w = 0; w < warp; ++w) before += warp_totals[w];
  return before + inc - v;
}

// The bin, counted from the top, where the running total (of counts or masses, starting at `above`) reaches
// `need`: total(bins above) < need <= total(bins above) + bin. Where rounding leaves the masses short of `need`,
// the lowest non-empty bin. Leaves s.found_bin, s.found_before (total above the bin), s.found_count (its count).
template <int THREADS, int NB, typename T>
__device__ void find_bin(const T* hist, T above, T need, Shared<THREADS>& s) {
  constexpr int PER = NB / THREADS;
  const int first = NB - 1 - threadIdx.x * PER;  // this thread's bins: first, first - 1, ... (descending)
  T mine = 0;
#pragma unroll
  for (int q = 0; q < PER; ++q) mine += hist[first - q];
  __shared__ T totals[THREADS / 32];
  T cum = above + block_exclusive_scan<THREADS, T>(mine, totals);
  if (threadIdx.x == 0) {
    s.found_bin = -1;
    s.lowest_bin = NB;
  }
  __syncthreads();
  int lowest = NB;
#pragma unroll
  for (int q = 0; q < PER; ++q) {
    const int bin = first - q;
    const T h = hist[bin];
    if (cum < need && cum + h >= need) {
      s.found_bin = bin;
      s.found_before = (float)cum;
    }
    if (s.count[bin] != 0) lowest = bin;
    cum += h;
  }
  if (lowest < NB) atomicMin(&s.lowest_bin, lowest);
  __syncthreads();
  if (s.found_bin < 0 && threadIdx.x == 0) {  // rounding: everything down to the lowest non-empty bin (rare)
    T before = above;
    for (int j = NB - 1; j > s.lowest_bin; --j) before += hist[j];
    s.found_bin = s.lowest_bin < NB ? s.lowest_bin : 0;
    s.found_before = (float)before;
  }
  __syncthreads();
  if (threadIdx.x == 0) s.found_count = s.count[s.found_bin];
  __syncthreads();
}

template <int THREADS, int NB>
__device__ __forceinline__ void clear_hist(Shared<THREADS>& s) {
  for (int j = threadIdx.x; j < NB; j += THREADS) {
    s.count[j] = 0;
    s.mass[j] = 0.0f;
  }
  __syncthreads();
}

__device__ __forceinline__ int level_shift(int level) { return level == 0 ? 21 : (level == 1 ? 10 : 0); }
__device__ __forceinline__ uint32_t level_bins(int level) { return level == 2 ? 1024u : 2048u; }

// -- the kernel body ---------------------------------------------------------------------------------------------
// Grid: blockIdx.x = row. Without counts (have_counts 0) no penalties and nothing is counted; info may be null.
template <int THREADS>
__device__ void run(const float* __restrict__ all_logits, const float* __restrict__ all_params, int* counts,
                    int* ids, int* info, int vocab, int have_counts) {
  __shared__ Shared<THREADS> s;
  const int row = blockIdx.x;
  const float* logits = all_logits + (size_t)row * vocab;
  const Row r = load_row(all_params + (size_t)row * PARAMS, have_counts != 0);
  int* slot_counts = have_counts ? counts + (size_t)r.slot * vocab : nullptr;
  const int tid = threadIdx.x;
  int pick;
  int kept = 1;
  uint32_t k_key = 0, p_key = 0;

  if (!(r.temperature > 0.0f)) {  // greedy: argmax with the lowest id on ties, NaN above everything (numpy)
    uint64_t best = 0;
    for_each<THREADS>(logits, slot_counts, vocab, r, [&](int i, float l) {
      const uint32_t key = (l != l) ? 0xffffffffu : float_key(l);
      const uint64_t v = ((uint64_t)key << 32) | (uint32_t)(0xffffffffu - (uint32_t)i);
      best = v > best ? v : best;
    });
    best = block_max_u64<THREADS>(best, s);
    pick = (int)(0xffffffffu - (uint32_t)best);
  } else {
    const float t = r.temperature;
    const bool top_k = r.top_k > 0 && r.top_k < vocab;
    // pass 1: the max of x, and the top-k histogram of its first digit
    if (top_k) clear_hist<THREADS, BINS>(s);
    float m = -INFINITY;
    for_each<THREADS>(logits, slot_counts, vocab, r, [&](int, float l) {
      const float x = __fdiv_rn(l, t);
      m = fmaxf(m, x);
      if (top_k) atomicAdd(&s.count[float_key(x) >> 21], 1u);
    });
    m = block_max<THREADS>(m, s);

    // top-k: the key K of the k-th largest x, or the floor of a bin holding exactly the rest of the k
    uint32_t k_floor = 0;
    if (top_k) {
      uint32_t prefix = 0, above = 0;
      for (int level = 0;; ++level) {
        const int shift = level_shift(level);
        if (level > 0) {
          clear_hist<THREADS, BINS>(s);
          const int up = level_shift(level - 1);
          const uint32_t mask = level_bins(level) - 1;
          for_each<THREADS>(logits, slot_counts, vocab, r, [&](int, float l) {
            const uint32_t key = float_key(__fdiv_rn(l, t));
            if ((key >> up) == prefix) atomicAdd(&s.count[(key >> shift) & mask], 1u);
          });
        }
        __syncthreads();
        if (level == 2) find_bin<THREADS, 1024, uint32_t>(s.count, above, (uint32_t)r.top_k, s);
        else find_bin<THREADS, BINS, uint32_t>(s.count, above, (uint32_t)r.top_k, s);
        prefix = (prefix << (level == 2 ? 10 : 11)) | (uint32_t)s.found_bin;
        const uint32_t before = (uint32_t)s.found_before;
        if (level == 2 || before + s.found_count == (uint32_t)r.top_k) {
          k_floor = prefix << shift;
          break;
        }
        above = before;
      }
      k_key = k_floor;
    }

    // top-p: the cut key C on w among the top-k survivors; ties at C kept in id order up to `last_tie`
    const bool top_p = r.top_p < 1.0f;
    uint32_t p_floor = 0, tie_key = 0;
    int last_tie = 0x7fffffff;
    if (top_p) {
      uint32_t prefix = 0;
      float above = 0.0f, need = 0.0f;
      for (int level = 0;; ++level) {
        const int shift = level_shift(level);
        const int up = level > 0 ? level_shift(level - 1) : 0;
        const uint32_t mask = level_bins(level) - 1;
        clear_hist<THREADS, BINS>(s);
        for_each<THREADS>(logits, slot_counts, vocab, r, [&](int, float l) {
          const float x = __fdiv_rn(l, t);
          if (top_k && float_key(x) < k_floor) return;
          const float w = __expf(x - m);
          const uint32_t key = float_key(w);
          if (level == 0 || (key >> up) == prefix) {
            const uint32_t bin = (key >> shift) & mask;
            atomicAdd(&s.count[bin], 1u);
            atomicAdd(&s.mass[bin], w);
          }
        });
        __syncthreads();
        if (level == 0) {
          float mine = 0.0f;
          for (int j = tid; j < BINS; j += THREADS) mine += s.mass[j];
          for (int o = 16; o; o >>= 1) mine += __shfl_xor_sync(0xffffffffu, mine, o);
          if ((tid & 31) == 0) s.redf[tid >> 5] = mine;
          __syncthreads();
          float total = 0.0f;
          for (int w = 0; w < THREADS / 32; ++w) total += s.redf[w];
          need = r.top_p * total * (1.0f - 1e-6f);
        }
        if (level == 2) find_bin<THREADS, 1024, float>(s.mass, above, need, s);
        else find_bin<THREADS, BINS, float>(s.mass, above, need, s);
        prefix = (prefix << (level == 2 ? 10 : 11)) | (uint32_t)s.found_bin;
        if (s.found_count == 1 || level == 2) {
          p_floor = prefix << shift;
          if (level == 2 && s.found_count > 1) {  // several tokens of this exact w: keep the first `ties` by id
            const float c = key_float(prefix);
            const float room = fminf((need - s.found_before) / c, 1e9f);
            const int ties = max(1, min((int)s.found_count, (int)ceilf(room)));
            if (ties < (int)s.found_count) {
              tie_key = prefix;
              int seen = 0;  // scan in id order, a tile of THREADS tokens at a time (rare path: scalar loads)
              for (int base = 0; base < vocab; base += THREADS) {
                const int i = base + tid;
                bool eq = false;
                if (i < vocab) {
                  const float l = logits[i];
                  const float x = __fdiv_rn(r.penalize ? penalize(l, slot_counts[i], r) : l, t);
                  eq = !(top_k && float_key(x) < k_floor) && float_key(__expf(x - m)) == prefix;
                }
                const int before = block_exclusive_scan<THREADS, int>(eq ? 1 : 0, (int*)s.redu);
                if (eq && seen + before + 1 == ties) s.found_bin = i;
                seen += (int)block_sum_u32<THREADS>(eq ? 1u : 0u, s);
                if (seen >= ties) break;
              }
              __syncthreads();
              last_tie = s.found_bin;
            }
          }
          break;
        }
        above = s.found_before;
      }
      p_key = p_floor;
    }

    // the draw: Gumbel-max over the kept tokens
    const bool need_w = top_p || r.min_p > 0.0f;
    const float min_p = r.min_p;
    uint64_t best = 0;
    uint32_t n_kept = 0;
    for_each<THREADS>(logits, slot_counts, vocab, r, [&](int i, float l) {
      const float x = __fdiv_rn(l, t);
      if (top_k && float_key(x) < k_floor) return;
      if (need_w) {
        const float w = __expf(x - m);
        const uint32_t key = float_key(w);
        if (top_p && (key < p_floor || (key == tie_key && i > last_tie))) return;
        if (w < min_p) return;
      }
      ++n_kept;
      const float score = (x - m) + gumbel(r.noise, i);
      const uint64_t v = ((uint64_t)float_key(score) << 32) | (uint32_t)(0xffffffffu - (uint32_t)i);
      best = v > best ? v : best;
    });
    best = block_max_u64<THREADS>(best, s);
    kept = (int)block_sum_u32<THREADS>(n_kept, s);
    pick = (int)(0xffffffffu - (uint32_t)best);
  }
  if (tid == 0) {
    ids[row] = pick;
    if (info != nullptr) {
      info[row * INFO + KEPT] = kept;
      info[row * INFO + TOP_K_KEY] = (int)k_key;
      info[row * INFO + TOP_P_KEY] = (int)p_key;
    }
    if (slot_counts != nullptr && (r.flags & UPDATE_COUNTS) && pick >= 0 && pick < vocab) slot_counts[pick] += 1;
  }
}

// -- the split kernel: SPLIT blocks per row ---------------------------------------------------------------------
// The same select and draw as run(), with a row's vocabulary cut into `split` contiguous slices, one block each, so
// that every pass over the row runs on `split` SMs. groups = min(batch, GROUPS) groups of `split` consecutive blocks
// (split = gridDim.x / groups <= MAX_SPLIT, chosen by the launch: targets/cuda/sampling.py); a group takes the rows
// group, group + groups, ... Between passes the blocks of a group meet at a barrier in global memory; the launch
// keeps the grid small enough to be resident at once (<= 256 blocks), and blocks start in order anyway, so a group
// never waits on a block that cannot start. Each pass: every
// block builds its histogram in shared memory, adds its non-empty bins into the group's global histogram; after the
// barrier every block reads the merged histogram and takes the same decision (the same bins, the same cut), so
// the blocks run the same sequence of barriers. Top-p masses are summed in 64-bit fixed point (w * 2^40, rounded):
// exact and independent of the order of the additions, so a seeded call reproduces; each token's mass is within
// 2^-41 of its float32 w, so a sum over n tokens is within n * 2^-41 (6e-8 for 128256 tokens, total >= 1 since the
// largest w is 1) of the exact sum of the float32 weights: inside the 1e-6 slack of the host's `need`.
// Ties at a top-p cut (several tokens of the cut's exact w, only some kept): the kept ones are the first in id
// order; each block counts its own, one more barrier gives every block the count before its slice.
// The draw is run()'s Gumbel-max (the same hash of (seed, step, token id): the same token for the same seed), each
// block over its slice, combined by block 0 of the group, which also writes the outputs and the penalty count.
// Workspace: per group in global memory, zero when the kernel starts and when it ends (each row clears what it
// used after its last barrier); per-block slots and histograms alternate between two sets (row parity), so a
// block that runs ahead into the next row never writes what a slower block of the same group still reads.
constexpr int MAX_SPLIT = 32;  // blocks per row at most: one warp's lanes read the per-block values
constexpr int GROUPS = 16;     // rows sampled at once at most
constexpr int K_LEVELS = 3, P_LEVELS = 3;
constexpr float FIX_SCALE = 1099511627776.0f;  // 2^40

struct Workspace {
  unsigned int arrived;     // blocks at the current barrier (the last one resets it)
  unsigned int pad0[31];
  unsigned int generation;  // barriers passed (wrapping)
  unsigned int pad1[31];
  float maxv[2][MAX_SPLIT];
  unsigned long long best[2][MAX_SPLIT];
  unsigned int kept[2][MAX_SPLIT];
  unsigned int ties[2][MAX_SPLIT];
  unsigned int count[2][K_LEVELS + P_LEVELS][BINS];
  unsigned long long mass[2][P_LEVELS][BINS];
};
__device__ Workspace g_workspace[GROUPS];

template <int THREADS>
struct SplitShared {
  uint32_t count[BINS];  // this block's histogram, then the group's merged one
  unsigned long long mass[BINS];
  uint64_t red64[THREADS / 32];
  float redf[THREADS / 32];
  uint32_t redu[THREADS / 32];
  int found_bin, lowest_bin, last_tie;
  unsigned long long found_before;
  uint32_t found_count;
};

__device__ __forceinline__ unsigned long long fixed_mass(float w) { return __float2ull_rn(w * FIX_SCALE); }

// All `split` blocks of a group: writes before it are seen by every block of the group after it. The last block
// to arrive resets the count, then bumps the generation the others wait on (the count is 0 between barriers, so
// any split works and a call leaves the workspace as it found it).
__device__ __forceinline__ void group_barrier(Workspace& ws, int split) {
  __syncthreads();
  if (threadIdx.x == 0) {
    volatile unsigned int* generation = &ws.generation;
    const unsigned int gen = *generation;  // cannot move before this block arrives
    __threadfence();
    if (atomicAdd(&ws.arrived, 1u) == (unsigned int)split - 1u) {
      atomicExch(&ws.arrived, 0u);
      __threadfence();
      atomicAdd(&ws.generation, 1u);
    } else {
      while (*generation == gen) __nanosleep(20);
    }
    __threadfence();
  }
  __syncthreads();
}

template <int THREADS, typename S>
__device__ __forceinline__ unsigned long long block_sum_u64(unsigned long long v, S& s) {
  for (int o = 16; o; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  __syncthreads();
  if ((threadIdx.x & 31) == 0) s.red64[threadIdx.x >> 5] = v;
  __syncthreads();
  v = 0;
  for (int w = 0; w < THREADS / 32; ++w) v += s.red64[w];
  return v;
}

// run()'s find_bin on the merged histogram: `hist` (counts or fixed-point masses), `cnt` the counts.
template <int THREADS, int NB, typename T>
__device__ void split_find_bin(const T* hist, const uint32_t* cnt, T above, T need, SplitShared<THREADS>& s) {
  constexpr int PER = NB / THREADS;
  static_assert(PER * THREADS == NB, "bins per thread");
  const int first = NB - 1 - threadIdx.x * PER;
  T mine = 0;
#pragma unroll
  for (int q = 0; q < PER; ++q) mine += hist[first - q];
  __shared__ T totals[THREADS / 32];
  T cum = above + block_exclusive_scan<THREADS, T>(mine, totals);
  if (threadIdx.x == 0) {
    s.found_bin = -1;
    s.lowest_bin = NB;
  }
  __syncthreads();
  int lowest = NB;
#pragma unroll
  for (int q = 0; q < PER; ++q) {
    const int bin = first - q;
    const T h = hist[bin];
    if (cum < need && cum + h >= need) {
      s.found_bin = bin;
      s.found_before = (unsigned long long)cum;
    }
    if (cnt[bin] != 0) lowest = bin;
    cum += h;
  }
  if (lowest < NB) atomicMin(&s.lowest_bin, lowest);
  __syncthreads();
  if (s.found_bin < 0 && threadIdx.x == 0) {  // not reached with exact sums; kept as run()'s fallback
    T before = above;
    for (int j = NB - 1; j > s.lowest_bin; --j) before += hist[j];
    s.found_bin = s.lowest_bin < NB ? s.lowest_bin : 0;
    s.found_before = (unsigned long long)before;
  }
  __syncthreads();
  if (threadIdx.x == 0) s.found_count = cnt[s.found_bin];
  __syncthreads();
}

template <int THREADS>
__device__ __forceinline__ void clear_local(SplitShared<THREADS>& s, bool masses) {
  for (int j = threadIdx.x; j < BINS; j += THREADS) {
    s.count[j] = 0;
    if (masses) s.mass[j] = 0ull;
  }
  __syncthreads();
}

// This block's non-empty bins into the group's histogram (before the barrier).
template <int THREADS>
__device__ __forceinline__ void merge_local(const SplitShared<THREADS>& s, unsigned int* count,
                                            unsigned long long* mass, int nb) {
  __syncthreads();
  for (int j = threadIdx.x; j < nb; j += THREADS) {
    const uint32_t c = s.count[j];
    if (c != 0) {
      atomicAdd(count + j, c);
      if (mass != nullptr) atomicAdd(mass + j, s.mass[j]);
    }
  }
}

// The group's merged histogram into shared memory (after the barrier; L2 reads: other SMs wrote it).
template <int THREADS>
__device__ __forceinline__ void load_merged(SplitShared<THREADS>& s, const unsigned int* count,
                                            const unsigned long long* mass, int nb) {
  for (int j = threadIdx.x; j < nb; j += THREADS) {
    s.count[j] = __ldcg(count + j);
    if (mass != nullptr) s.mass[j] = __ldcg(mass + j);
  }
  __syncthreads();
}

// Grid: min(batch, GROUPS) * split blocks (split consecutive blocks per group, split <= MAX_SPLIT), THREADS each.
// STRIDE: floats per params row (PARAMS, or EXT_PARAMS for sample_ext's rows, whose first PARAMS fields are these).
template <int THREADS, int STRIDE = PARAMS>
__device__ void run_split(const float* __restrict__ all_logits, const float* __restrict__ all_params, int* counts,
                          int* ids, int* info, int vocab, int have_counts, int batch) {
  static_assert(MAX_SPLIT == 32, "one lane per block of the group");
  __shared__ SplitShared<THREADS> s;
  const int tid = threadIdx.x, lane = tid & 31;
  const int groups = min(batch, GROUPS), split = (int)gridDim.x / groups;
  const int part = (int)blockIdx.x % split, group = (int)blockIdx.x / split;
  const bool mine_lane = lane < split;  // lanes reading the group's per-block values
  Workspace& ws = g_workspace[group];
  const int per = ((vocab + split - 1) / split + 3) & ~3;  // a multiple of 4: 16-byte loads stay aligned
  const int lo = min(vocab, part * per);
  const int n = min(vocab, lo + per) - lo;
  int parity = 0;
  for (int row = group; row < batch; row += groups, parity ^= 1) {
    const float* logits = all_logits + (size_t)row * vocab + lo;
    const Row r = load_row(all_params + (size_t)row * STRIDE, have_counts != 0);
    int* row_counts = have_counts ? counts + (size_t)r.slot * vocab : nullptr;
    const int* slice_counts = row_counts != nullptr ? row_counts + lo : nullptr;
    bool used_hist = false;
    int kept = 1;
    uint32_t k_key = 0, p_key = 0;

    if (!(r.temperature > 0.0f)) {  // greedy, as run()
      uint64_t best = 0;
      for_each<THREADS>(logits, slice_counts, n, r, [&](int i, float l) {
        const uint32_t key = (l != l) ? 0xffffffffu : float_key(l);
        const uint64_t v = ((uint64_t)key << 32) | (uint32_t)(0xffffffffu - (uint32_t)(lo + i));
        best = v > best ? v : best;
      });
      best = block_max_u64<THREADS>(best, s);
      if (tid == 0) __stcg(&ws.best[parity][part], (unsigned long long)best);
    } else {
      const float t = r.temperature;
      const bool top_k = r.top_k > 0 && r.top_k < vocab;
      // pass 1: the max of x, and the top-k histogram of its first digit
      if (top_k) clear_local<THREADS>(s, false);
      float m = -INFINITY;
      for_each<THREADS>(logits, slice_counts, n, r, [&](int, float l) {
        const float x = __fdiv_rn(l, t);
        m = fmaxf(m, x);
        if (top_k) atomicAdd(&s.count[float_key(x) >> 21], 1u);
      });
      m = block_max<THREADS>(m, s);
      if (tid == 0) __stcg(&ws.maxv[parity][part], m);
      if (top_k) merge_local<THREADS>(s, ws.count[parity][0], nullptr, BINS);
      group_barrier(ws, split);
      m = mine_lane ? __ldcg(&ws.maxv[parity][lane]) : -INFINITY;
      for (int o = 16; o; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));

      uint32_t k_floor = 0;
      if (top_k) {
        used_hist = true;
        uint32_t prefix = 0, above = 0;
        for (int level = 0;; ++level) {
          const int shift = level_shift(level);
          const int nb = (int)level_bins(level);
          unsigned int* merged = ws.count[parity][level];
          if (level > 0) {
            clear_local<THREADS>(s, false);
            const int up = level_shift(level - 1);
            const uint32_t mask = level_bins(level) - 1;
            for_each<THREADS>(logits, slice_counts, n, r, [&](int, float l) {
              const uint32_t key = float_key(__fdiv_rn(l, t));
              if ((key >> up) == prefix) atomicAdd(&s.count[(key >> shift) & mask], 1u);
            });
            merge_local<THREADS>(s, merged, nullptr, nb);
            group_barrier(ws, split);
          }
          load_merged<THREADS>(s, merged, nullptr, nb);
          if (level == 2) split_find_bin<THREADS, 1024, uint32_t>(s.count, s.count, above, (uint32_t)r.top_k, s);
          else split_find_bin<THREADS, BINS, uint32_t>(s.count, s.count, above, (uint32_t)r.top_k, s);
          prefix = (prefix << (level == 2 ? 10 : 11)) | (uint32_t)s.found_bin;
          const uint32_t before = (uint32_t)s.found_before;
          if (level == 2 || before + s.found_count == (uint32_t)r.top_k) {
            k_floor = prefix << shift;
            break;
          }
          above = before;
        }
        k_key = k_floor;
      }

      // top-p on w among the top-k survivors; ties at the cut key kept in id order (up to last_tie in this slice)
      const bool top_p = r.top_p < 1.0f;
      uint32_t p_floor = 0, tie_key = 0;
      int last_tie = 0x7fffffff;
      if (top_p) {
        used_hist = true;
        uint32_t prefix = 0;
        unsigned long long above = 0, need = 0;
        for (int level = 0;; ++level) {
          const int shift = level_shift(level);
          const int up = level > 0 ? level_shift(level - 1) : 0;
          const int nb = (int)level_bins(level);
          const uint32_t mask = level_bins(level) - 1;
          unsigned int* merged_count = ws.count[parity][K_LEVELS + level];
          unsigned long long* merged_mass = ws.mass[parity][level];
          clear_local<THREADS>(s, true);
          for_each<THREADS>(logits, slice_counts, n, r, [&](int, float l) {
            const float x = __fdiv_rn(l, t);
            if (top_k && float_key(x) < k_floor) return;
            const float w = __expf(x - m);
            const uint32_t key = float_key(w);
            if (level == 0 || (key >> up) == prefix) {
              const uint32_t bin = (key >> shift) & mask;
              atomicAdd(&s.count[bin], 1u);
              atomicAdd(&s.mass[bin], fixed_mass(w));
            }
          });
          merge_local<THREADS>(s, merged_count, merged_mass, nb);
          group_barrier(ws, split);
          if (level == 2) {  // keep this block's own counts (the ties in its slice) in the unused upper half
            for (int j = tid; j < 1024; j += THREADS) s.count[1024 + j] = s.count[j];
            __syncthreads();
          }
          load_merged<THREADS>(s, merged_count, merged_mass, nb);
          if (level == 0) {
            unsigned long long mine = 0;
            for (int j = tid; j < BINS; j += THREADS) mine += s.mass[j];
            const unsigned long long total = block_sum_u64<THREADS>(mine, s);
            need = (unsigned long long)((double)total * (double)r.top_p * (1.0 - 1e-6));
          }
          if (level == 2) split_find_bin<THREADS, 1024, unsigned long long>(s.mass, s.count, above, need, s);
          else split_find_bin<THREADS, BINS, unsigned long long>(s.mass, s.count, above, need, s);
          prefix = (prefix << (level == 2 ? 10 : 11)) | (uint32_t)s.found_bin;
          if (s.found_count == 1 || level == 2) {
            p_floor = prefix << shift;
            if (level == 2 && s.found_count > 1) {  // several tokens of this exact w: the first `ties` by id
              const unsigned long long q = fixed_mass(key_float(prefix));  // each one's mass, as summed
              const unsigned long long room = need - s.found_before;       // > 0: the cut bin reaches need
              const unsigned long long want = q == 0 ? (unsigned long long)s.found_count : (room + q - 1) / q;
              const int ties = (int)max(1ull, min((unsigned long long)s.found_count, want));
              if (ties < (int)s.found_count) {
                tie_key = prefix;
                const int mine = (int)s.count[1024 + s.found_bin];
                if (tid == 0) __stcg(&ws.ties[parity][part], (unsigned int)mine);
                group_barrier(ws, split);
                const int v = mine_lane ? (int)__ldcg(&ws.ties[parity][lane]) : 0;  // ties in the slices before
                int inc = v;
                for (int o = 1; o < 32; o <<= 1) {
                  const int up_v = __shfl_up_sync(0xffffffffu, inc, o);
                  if (lane >= o) inc += up_v;
                }
                const int before_me = __shfl_sync(0xffffffffu, inc - v, part);
                const int room_here = ties - before_me;  // how many of this slice's ties are kept
                if (room_here <= 0) {
                  last_tie = -1;
                } else if (room_here < mine) {  // the last kept tie is here: scan the slice in id order
                  int seen = 0;
                  if (tid == 0) s.last_tie = -1;
                  __syncthreads();
                  for (int base = 0; base < n; base += THREADS) {
                    const int i = base + tid;
                    bool eq = false;
                    if (i < n) {
                      const float l = logits[i];
                      const float x = __fdiv_rn(r.penalize ? penalize(l, slice_counts[i], r) : l, t);
                      eq = !(top_k && float_key(x) < k_floor) && float_key(__expf(x - m)) == prefix;
                    }
                    const int rank = block_exclusive_scan<THREADS, int>(eq ? 1 : 0, (int*)s.redu);
                    if (eq && seen + rank + 1 == room_here) s.last_tie = lo + i;
                    seen += (int)block_sum_u32<THREADS>(eq ? 1u : 0u, s);
                    if (seen >= room_here) break;
                  }
                  __syncthreads();
                  last_tie = s.last_tie;
                }
              }
            }
            break;
          }
          above = s.found_before;
        }
        p_key = p_floor;
      }

      // the draw: Gumbel-max over this slice's kept tokens
      const bool need_w = top_p || r.min_p > 0.0f;
      const float min_p = r.min_p;
      uint64_t best = 0;
      uint32_t n_kept = 0;
      for_each<THREADS>(logits, slice_counts, n, r, [&](int il, float l) {
        const int i = lo + il;
        const float x = __fdiv_rn(l, t);
        if (top_k && float_key(x) < k_floor) return;
        if (need_w) {
          const float w = __expf(x - m);
          const uint32_t key = float_key(w);
          if (top_p && (key < p_floor || (key == tie_key && i > last_tie))) return;
          if (w < min_p) return;
        }
        ++n_kept;
        const float score = (x - m) + gumbel(r.noise, i);
        const uint64_t v = ((uint64_t)float_key(score) << 32) | (uint32_t)(0xffffffffu - (uint32_t)i);
        best = v > best ? v : best;
      });
      best = block_max_u64<THREADS>(best, s);
      const uint32_t kept_here = block_sum_u32<THREADS>(n_kept, s);
      if (tid == 0) {
        __stcg(&ws.best[parity][part], (unsigned long long)best);
        __stcg(&ws.kept[parity][part], kept_here);
      }
    }
    group_barrier(ws, split);
    if (part == 0 && tid < 32) {  // block 0 of the group: the row's token and report
      uint64_t best = mine_lane ? __ldcg(&ws.best[parity][lane]) : 0ull;
      uint32_t total_kept = (mine_lane && r.temperature > 0.0f) ? __ldcg(&ws.kept[parity][lane]) : 0u;
      for (int o = 16; o; o >>= 1) {
        const uint64_t other = __shfl_xor_sync(0xffffffffu, best, o);
        best = other > best ? other : best;
        total_kept += __shfl_xor_sync(0xffffffffu, total_kept, o);
      }
      if (r.temperature > 0.0f) kept = (int)total_kept;
      const int pick = (int)(0xffffffffu - (uint32_t)best);
      if (lane == 0) {
        ids[row] = pick;
        if (info != nullptr) {
          info[row * INFO + KEPT] = kept;
          info[row * INFO + TOP_K_KEY] = (int)k_key;
          info[row * INFO + TOP_P_KEY] = (int)p_key;
        }
        if (row_counts != nullptr && (r.flags & UPDATE_COUNTS) && pick >= 0 && pick < vocab) row_counts[pick] += 1;
      }
    }
    if (used_hist) {  // after the row's last barrier nobody reads this row's histograms: clear this block's share
      constexpr int ALL_C = (K_LEVELS + P_LEVELS) * BINS, ALL_M = P_LEVELS * BINS;
      const int nc = (ALL_C + split - 1) / split, nm = (ALL_M + split - 1) / split;
      unsigned int* c = &ws.count[parity][0][0];
      unsigned long long* mm = &ws.mass[parity][0][0];
      for (int j = part * nc + tid; j < min(ALL_C, (part + 1) * nc); j += THREADS) __stcg(c + j, 0u);
      for (int j = part * nm + tid; j < min(ALL_M, (part + 1) * nm); j += THREADS) __stcg(mm + j, 0ull);
    }
  }
}

// Clear slot `*slot` of the penalty table and flag the n prompt tokens (one block).
template <int THREADS>
__device__ void reset(int* counts, const int* prompt, const int* slot, int n, int vocab) {
  int* row = counts + (size_t)(*slot) * vocab;
  for (int i = threadIdx.x; i < vocab; i += THREADS) row[i] = 0;
  __syncthreads();
  for (int j = threadIdx.x; j < n; j += THREADS) {
    const int id = prompt[j];
    if (id >= 0 && id < vocab) row[id] = PROMPT_FLAG;
  }
}

// A slot for a generation part way through (a preempted sequence admitted again): meta = (slot, n_prompt); the
// first n_prompt of the n tokens are the prompt (flagged), the rest were generated (counted), as if reset() had run
// at its start and run() had counted each generated token (one block).
template <int THREADS>
__device__ void restore(int* counts, const int* tokens, const int* meta, int n, int vocab) {
  int* row = counts + (size_t)meta[0] * vocab;
  const int n_prompt = meta[1];
  for (int i = threadIdx.x; i < vocab; i += THREADS) row[i] = 0;
  __syncthreads();
  for (int j = threadIdx.x; j < min(n, n_prompt); j += THREADS) {
    const int id = tokens[j];
    if (id >= 0 && id < vocab) row[id] = PROMPT_FLAG;
  }
  __syncthreads();
  for (int j = max(0, n_prompt) + threadIdx.x; j < n; j += THREADS) {
    const int id = tokens[j];
    if (id >= 0 && id < vocab) atomicAdd(row + id, 1);
  }
}

// -- serving extras (sample_ext): logit_bias and a grammar's mask before the draw, log-probabilities after it ------
// sample_ext's params rows are EXT_PARAMS wide: PARAMS fields as above, then (int32 bits)
//   MASK      word offset in `aux` of the row's allowed-token bitmask (ceil(vocab / 32) words, token i = bit i & 31
//             of word i >> 5, llguidance's layout), -1: no mask
//   BIAS      word offset in `aux` of NBIAS (token id, float32 bits of the value) pairs (ids distinct)
//   NBIAS     number of bias pairs (0: none)
//   LOGPROBS  k in [0, TOP_LOGPROBS]: the sampled token's log-probability and the k most likely; -1: none
// The host (runtime/serving/device_sampling.py) packs `aux` per step with only the rows that have a mask or a bias.
enum ExtParam : int { MASK = 12, BIAS = 13, NBIAS = 14, LOGPROBS = 15, EXT_PARAMS = 16 };
constexpr int TOP_LOGPROBS = 20;
constexpr int LOGPROB_COLS = 1 + 2 * TOP_LOGPROBS;  // [logprob, (id bits, logprob) x TOP_LOGPROBS]; id -1: none

__device__ __forceinline__ bool allowed(const int* words, int i) { return (words[i >> 5] >> (i & 31)) & 1; }

// In place, as runtime/serving/sampling.py's sample_token: logit += bias (float32), then every token the mask does
// not allow to -inf. Grid: batch * parts blocks (blockIdx.x = row * parts + part), each a slice of the row; the
// bias is added by part 0 to allowed tokens only, the mask writes only disallowed ones: no token is written twice.
template <int THREADS>
__device__ void prepare(float* all_logits, const float* __restrict__ all_params, const int* __restrict__ aux,
                        int vocab, int parts) {
  const int row = (int)blockIdx.x / parts, part = (int)blockIdx.x % parts;
  const float* p = all_params + (size_t)row * EXT_PARAMS;
  const int mask = __float_as_int(p[MASK]), bias = __float_as_int(p[BIAS]), nbias = __float_as_int(p[NBIAS]);
  float* logits = all_logits + (size_t)row * vocab;
  const int* words = mask >= 0 ? aux + mask : nullptr;
  if (words != nullptr) {
    const int per = (((vocab + parts - 1) / parts) + 31) & ~31;
    const int lo = min(vocab, part * per), hi = min(vocab, lo + per);
    for (int i = lo + threadIdx.x; i < hi; i += THREADS)
      if (!allowed(words, i)) logits[i] = -INFINITY;
  }
  if (part == 0) {
    for (int j = threadIdx.x; j < nbias; j += THREADS) {
      const int id = aux[bias + 2 * j];
      if (id < 0 || id >= vocab || (words != nullptr && !allowed(words, id))) continue;
      logits[id] = __fadd_rn(logits[id], __int_as_float(aux[bias + 2 * j + 1]));
    }
  }
}

template <int THREADS>
struct LogprobShared {
  uint32_t count[BINS];
  double redd[THREADS / 32];
  float redf[THREADS / 32];
  uint32_t totals[THREADS / 32];
  unsigned long long top[TOP_LOGPROBS];
  int found_bin, n_top;
  uint32_t found_before, found_count;
};

// The radix select's 64-bit key: the logit's order-preserving bits, then the id reversed (distinct keys; of equal
// logits the lower id is larger, so it comes first).
__device__ __forceinline__ unsigned long long id_key(float l, int i) {
  return ((unsigned long long)float_key(l) << 32) | (unsigned long long)(0xffffffffu - (uint32_t)i);
}

// The bin, from the top, where the running count (from `above`) reaches need (1 <= need - above <= total).
template <int THREADS>
__device__ void count_bin(LogprobShared<THREADS>& s, int nb, uint32_t above, uint32_t need) {
  const int per = nb / THREADS;  // nb is BINS or 512: 2 bins per thread, or 1 (the last threads none)
  const int first = nb - 1 - (int)threadIdx.x * max(per, 1);
  const bool mine_any = per > 0 || (int)threadIdx.x < nb;
  const int many = per > 0 ? per : (mine_any ? 1 : 0);
  uint32_t mine = 0;
  for (int q = 0; q < many; ++q) mine += s.count[first - q];
  uint32_t cum = above + block_exclusive_scan<THREADS, uint32_t>(mine, s.totals);
  for (int q = 0; q < many; ++q) {
    const uint32_t h = s.count[first - q];
    if (cum < need && cum + h >= need) {
      s.found_bin = first - q;
      s.found_before = cum;
      s.found_count = h;
    }
    cum += h;
  }
  __syncthreads();
}

// Grid: one block per row. For rows with LOGPROBS k >= 0: out[row] = the log-softmax (float64 sums) of the logits
// (after prepare) at the sampled token ids[row], and the k largest (id, log-probability), ties by lower id, ids -1
// past the finite ones (as logprob_of in runtime/serving/sampling.py). The k-th largest key comes from a radix select
// over id_key (11-bit digits, stopping once the cut bin holds exactly the rest), then one pass collects the k.
template <int THREADS>
__device__ void logprobs(const float* __restrict__ all_logits, const float* __restrict__ all_params,
                         const int* __restrict__ ids, float* out, int vocab) {
  __shared__ LogprobShared<THREADS> s;
  const int row = blockIdx.x, tid = threadIdx.x;
  const int want = __float_as_int(all_params[(size_t)row * EXT_PARAMS + LOGPROBS]);
  if (want < 0) return;
  const int k = min(min(want, TOP_LOGPROBS), vocab);
  const float* logits = all_logits + (size_t)row * vocab;
  float* o = out + (size_t)row * LOGPROB_COLS;
  float m = -INFINITY;
  for (int i = tid; i < vocab; i += THREADS) m = fmaxf(m, logits[i]);
  for (int w = 16; w; w >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, w));
  if ((tid & 31) == 0) s.redf[tid >> 5] = m;
  __syncthreads();
  m = s.redf[0];
  for (int w = 1; w < THREADS / 32; ++w) m = fmaxf(m, s.redf[w]);
  double sum = 0.0;
  for (int i = tid; i < vocab; i += THREADS) sum += exp((double)logits[i] - (double)m);
  for (int w = 16; w; w >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, w);
  if ((tid & 31) == 0) s.redd[tid >> 5] = sum;
  __syncthreads();
  sum = 0.0;
  for (int w = 0; w < THREADS / 32; ++w) sum += s.redd[w];
  const double lse = (double)m + log(sum);
  if (tid == 0) {
    const int token = ids[row];
    o[0] = (token >= 0 && token < vocab) ? (float)((double)logits[token] - lse) : -INFINITY;
  }
  for (int j = tid; j < TOP_LOGPROBS; j += THREADS) {
    o[1 + 2 * j] = __int_as_float(-1);
    o[2 + 2 * j] = 0.0f;
  }
  if (k == 0) return;
  unsigned long long prefix = 0, floor = 0;
  uint32_t above = 0;
  for (int shift = 53;; shift = max(shift - 11, 0)) {  // digits: bits 63..53, 52..42, 41..31, 30..20, 19..9, 8..0
    const int bits = shift == 0 ? 9 : 11, nb = 1 << bits;
    const int up = shift + bits;  // the digits above this one (the prefix); 64 at the first level
    for (int j = tid; j < BINS; j += THREADS) s.count[j] = 0;
    __syncthreads();
    for (int i = tid; i < vocab; i += THREADS) {
      const unsigned long long key = id_key(logits[i], i);
      if (up == 64 || (key >> up) == prefix) atomicAdd(&s.count[(key >> shift) & (nb - 1)], 1u);
    }
    __syncthreads();
    count_bin<THREADS>(s, nb, above, (uint32_t)k);
    prefix = (prefix << bits) | (unsigned long long)s.found_bin;
    if (s.found_before + s.found_count == (uint32_t)k || shift == 0) {
      floor = prefix << shift;
      break;
    }
    above = s.found_before;
    __syncthreads();
  }
  if (tid == 0) s.n_top = 0;
  __syncthreads();
  for (int i = tid; i < vocab; i += THREADS) {
    const unsigned long long key = id_key(logits[i], i);
    if (key >= floor) {
      const int at = atomicAdd(&s.n_top, 1);
      if (at < TOP_LOGPROBS) s.top[at] = key;
    }
  }
  __syncthreads();
  if (tid == 0) {
    const int n = min(s.n_top, k);
    for (int a = 1; a < n; ++a) {  // insertion sort, largest key first
      const unsigned long long v = s.top[a];
      int b = a - 1;
      for (; b >= 0 && s.top[b] < v; --b) s.top[b + 1] = s.top[b];
      s.top[b + 1] = v;
    }
    int w = 0;
    for (int a = 0; a < n; ++a) {
      const int id = (int)(0xffffffffu - (uint32_t)(s.top[a] & 0xffffffffull));
      const float l = logits[id];
      if (!isfinite(l)) continue;
      o[1 + 2 * w] = __int_as_float(id);
      o[2 + 2 * w] = (float)((double)l - lse);
      ++w;
    }
  }
}

}  // namespace sample
}  // namespace ember
#endif  // EMBER_SAMPLE_CUH
